"""The embedded online store: SQLite under DATA_DIR, one packed row per entity (a primary-key lookup a read)."""

import json
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
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec, unpack_rows

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_view (
    name TEXT PRIMARY KEY, entity_type TEXT NOT NULL, definition TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_values (
    entity_id TEXT PRIMARY KEY, values_json TEXT NOT NULL
) WITHOUT ROWID;
"""
READ_ROW = "SELECT entity_id, values_json FROM online_values WHERE entity_id = ?"
# One statement for any number of keys (a primary-key seek per key), the keys bound as one JSON array.
READ_ROWS = "SELECT entity_id, values_json FROM online_values WHERE entity_id IN (SELECT value FROM json_each(?))"
OPEN_FILES_PER_THREAD = 8

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
        connection = sqlite3.connect(path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(SCHEMA)
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
        written = 0
        with self.connect() as connection:
            for entity_id, event_time, values in rows:
                current = connection.execute(
                    "SELECT values_json FROM online_values WHERE entity_id = ?", [entity_id]
                ).fetchone()
                merged: dict[str, Any] = json.loads(current[0]) if current else {}
                stamp = event_time.timestamp()
                for name, value in values.items():
                    if value is None:
                        # No value is not a value: it would read back as "present" None. Like a sync from
                        # BigQuery (nulls never replace a value), it leaves the feature as it was.
                        continue
                    old = merged.get(name)
                    if old is None or old[1] <= stamp:
                        merged[name] = [value, stamp]
                connection.execute(
                    "INSERT INTO online_values (entity_id, values_json) VALUES (?, ?) "
                    "ON CONFLICT(entity_id) DO UPDATE SET values_json = excluded.values_json",
                    [entity_id, json.dumps(merged)],
                )
                written += 1
        return written

    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        connection = self._connection()
        ttls = self._ttls(connection)
        moment = (now or datetime.now(UTC)).timestamp()
        # fetchall: a statement left unfinished would hold its read snapshot, and later reads would not see
        # later writes.
        if len(entity_ids) == 1:
            found = dict(connection.execute(READ_ROW, [entity_ids[0]]).fetchall())
        else:
            found = dict(connection.execute(READ_ROWS, [json.dumps(list(entity_ids))]).fetchall())
        return unpack_rows(((e, found.get(e)) for e in entity_ids), features, ttls, moment)


def _file_identity(path: str) -> tuple[int, int]:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return (-1, -1)
    return (stat.st_dev, stat.st_ino)
