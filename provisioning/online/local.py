"""The embedded online store: SQLite under DATA_DIR, one packed row per entity (a primary-key lookup a read).

A row packs the entity's values (base.PackedRow) in `marshal` (a BLOB): decoding it is about five times faster
than JSON, and reading the 100 rows of a 100-key read is mostly decoding. Only this store writes the file under
DATA_DIR, so it is as trusted as the .pyc files beside the code (marshal is not for untrusted input). Rows written
as JSON text (before, or a value marshal cannot hold) and rows of the layout before are still read.
"""

import json
import marshal
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from django.conf import settings

from provisioning.offline.base import StepOutcome
from provisioning.online.base import (
    OnlineFeature,
    OnlineStore,
    OnlineValue,
    OnlineViewSpec,
    PackedRow,
    row_merge,
    unpack_rows,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_view (
    name TEXT PRIMARY KEY, entity_type TEXT NOT NULL, definition TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_values (
    entity_id TEXT PRIMARY KEY, values_json TEXT NOT NULL
);
"""
# A rowid table (the key in its own index), not WITHOUT ROWID: a B-tree keyed by the row itself keeps at most
# about 1 KB of a row in its 4 KB page, and an entity's 32 values take 1.4 KB, so every row there spilled into an
# overflow page and a read of 100 keys took five times as long (2.4 ms against 0.5 ms). Files made before are
# rebuilt once (_upgrade).
UPGRADE = """
CREATE TABLE online_values_rowid (entity_id TEXT PRIMARY KEY, values_json TEXT NOT NULL);
INSERT INTO online_values_rowid (entity_id, values_json) SELECT entity_id, values_json FROM online_values;
DROP TABLE online_values;
ALTER TABLE online_values_rowid RENAME TO online_values;
"""
READ_ROW = "SELECT entity_id, values_json FROM online_values WHERE entity_id = ?"
OPEN_FILES_PER_THREAD = 8
MARSHAL_VERSION = 4
_read_rows: dict[int, str] = {}


def _read_rows_sql(count: int) -> str:
    """One statement for `count` keys (a primary-key seek per key), `IN (?, ...)`: sqlite3 keeps the prepared
    statement of each count it saw (its statement cache), so a read does not parse SQL."""
    sql = _read_rows.get(count)
    if sql is None:
        marks = ", ".join("?" * count)
        sql = _read_rows[count] = f"SELECT entity_id, values_json FROM online_values WHERE entity_id IN ({marks})"  # noqa: S608
    return sql


def _decode(packed: str | bytes) -> Any:
    """A packed row: marshal (bytes) or JSON (text), in either layout. Our own file: see the module's docstring."""
    return marshal.loads(packed) if type(packed) is bytes else json.loads(packed)  # noqa: S302


def _encode(row: PackedRow) -> bytes | str:
    try:
        return marshal.dumps(row, MARSHAL_VERSION)
    except ValueError:  # a value of a type marshal does not know (a float subclass): JSON, as before
        return json.dumps(row)


# Opening a connection and creating the schema cost ten times a read, so each thread keeps one connection per
# file (sqlite3 connections belong to the thread that opened them), and each process the parsed TTLs of the
# view definition it last read (re-parsed only when the stored text changes, e.g. after an update elsewhere).
_threads = threading.local()
_ttls_by_path: dict[str, tuple[str, dict[str, int]]] = {}


class LocalOnlineStore(OnlineStore):
    kind = "local"

    @cached_property
    def path(self) -> Path:
        root = Path(self.options.get("path") or Path(settings.DATA_DIR) / "online")
        root.mkdir(parents=True, exist_ok=True)
        return root / f"{self.environment}.sqlite3"

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection to the store's file; a new one after a fork or when the file was replaced
        or removed (a cached connection would go on reading the old file)."""
        path = str(self.path)
        opened: dict[str, tuple[int, tuple[int, int], sqlite3.Connection]] = _threads.__dict__.setdefault("open", {})
        identity = _file_identity(path)
        entry = opened.get(path)
        if entry is not None:
            if entry[0] == os.getpid() and entry[1] == identity:
                return entry[2]
            del opened[path]
            if entry[0] == os.getpid():
                entry[2].close()
        while len(opened) >= OPEN_FILES_PER_THREAD:
            oldest = next(iter(opened))
            pid, _, stale = opened.pop(oldest)
            if pid == os.getpid():
                stale.close()
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # a store is kept per process: its folder may be gone
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
        _upgrade(connection)
        opened[path] = (os.getpid(), _file_identity(path), connection)
        return connection

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """The thread's connection; what the block changes is committed at its end, or rolled back."""
        connection = self._connection()
        try:
            yield connection
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    def update(self, view: OnlineViewSpec) -> StepOutcome:
        definition = json.dumps(
            {"features": [asdict(f) for f in view.features], "options": view.options}, sort_keys=True
        )
        with self.connect() as connection:
            row = connection.execute("SELECT definition FROM feature_view WHERE name = ?", [view.name]).fetchone()
            if row and row[0] == definition:
                return StepOutcome(request=[f"feature_view {view.name}"], changed=False)
            connection.execute(
                "INSERT INTO feature_view (name, entity_type, definition, updated_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET entity_type = excluded.entity_type, definition = excluded.definition, "
                "updated_at = excluded.updated_at",
                [view.name, view.entity_type, definition, datetime.now(UTC).isoformat()],
            )
        return StepOutcome(request=[f"feature_view {view.name}: {len(view.features)} features"], changed=True)

    def describe(self) -> OnlineViewSpec | None:
        if not self.path.exists():
            return None
        rows = self._connection().execute("SELECT name, entity_type, definition FROM feature_view LIMIT 1").fetchall()
        if not rows:
            return None
        name, entity_type, definition = rows[0]
        data = json.loads(definition)
        return OnlineViewSpec(
            name=name,
            entity_type=entity_type,
            features=tuple(OnlineFeature(**f) for f in data["features"]),
            options=data.get("options", {}),
        )

    def _ttls(self, connection: sqlite3.Connection) -> dict[str, int]:
        rows = connection.execute("SELECT definition FROM feature_view LIMIT 1").fetchall()
        if not rows:
            return {}
        definition = rows[0][0]
        cached = _ttls_by_path.get(str(self.path))
        if cached is not None and cached[0] == definition:
            return cached[1]
        ttls = {f["name"]: f["ttl_seconds"] for f in json.loads(definition)["features"]}
        _ttls_by_path[str(self.path)] = (definition, ttls)
        return ttls

    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        with self.connect() as connection:
            for entity_id, event_time, values in rows:
                current = connection.execute(
                    "SELECT values_json FROM online_values WHERE entity_id = ?", [entity_id]
                ).fetchone()
                merged = row_merge(_decode(current[0]) if current else None, [(event_time.timestamp(), values)])
                if merged is None:  # no value, and none before: no row, which reads as missing
                    continue
                connection.execute(
                    "INSERT INTO online_values (entity_id, values_json) VALUES (?, ?) "
                    "ON CONFLICT(entity_id) DO UPDATE SET values_json = excluded.values_json",
                    [entity_id, _encode(merged)],
                )
        return len(rows)

    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        connection = self._connection()
        ttls = self._ttls(connection)
        moment = (now or datetime.now(UTC)).timestamp()
        # fetchall: a statement left unfinished would hold its read snapshot, and later reads would not see
        # later writes.
        if len(entity_ids) == 1:
            found = dict(connection.execute(READ_ROW, entity_ids).fetchall())
        else:
            found = dict(connection.execute(_read_rows_sql(len(entity_ids)), entity_ids).fetchall())
        return unpack_rows(((e, found.get(e)) for e in entity_ids), features, ttls, moment, _decode)


def _without_rowid(connection: sqlite3.Connection) -> bool:
    row = connection.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'online_values'").fetchone()
    return bool(row and "WITHOUT ROWID" in row[0].upper())


def _upgrade(connection: sqlite3.Connection) -> None:
    """Rebuilds a file's WITHOUT ROWID values table (made before) as a rowid table, once, under the write lock
    (another process may be doing the same)."""
    if not _without_rowid(connection):
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        if _without_rowid(connection):
            for statement in UPGRADE.strip().split(";\n"):
                connection.execute(statement)
    except BaseException:
        connection.rollback()
        raise
    connection.commit()


def _file_identity(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_dev, stat.st_ino)
