"""The embedded online store: SQLite under DATA_DIR, one packed row per entity (a primary-key lookup a read)."""

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from provisioning.offline.base import StepOutcome
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_view (
    name TEXT PRIMARY KEY, entity_type TEXT NOT NULL, definition TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS online_values (
    entity_id TEXT PRIMARY KEY, values_json TEXT NOT NULL
) WITHOUT ROWID;
"""


class LocalOnlineStore(OnlineStore):
    kind = "local"

    @property
    def path(self) -> Path:
        root = Path(self.options.get("path") or Path(settings.DATA_DIR) / "online")
        root.mkdir(parents=True, exist_ok=True)
        return root / f"{self.environment}.sqlite3"

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            yield connection
            connection.commit()
        finally:
            connection.close()

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
        with self.connect() as connection:
            row = connection.execute("SELECT name, entity_type, definition FROM feature_view LIMIT 1").fetchone()
        if row is None:
            return None
        data = json.loads(row[2])
        return OnlineViewSpec(
            name=row[0],
            entity_type=row[1],
            features=tuple(OnlineFeature(**f) for f in data["features"]),
            options=data.get("options", {}),
        )

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
        view = self.describe()
        ttls = {f.name: f.ttl_seconds for f in view.features} if view else {}
        moment = (now or datetime.now(UTC)).timestamp()
        out: dict[str, dict[str, OnlineValue]] = {}
        with self.connect() as connection:
            for entity_id in entity_ids:
                row = connection.execute(
                    "SELECT values_json FROM online_values WHERE entity_id = ?", [entity_id]
                ).fetchone()
                stored = json.loads(row[0]) if row else {}
                values = {}
                for name in features:
                    item = stored.get(name)
                    if item is None:
                        values[name] = OnlineValue(None, None, "missing")
                        continue
                    event = datetime.fromtimestamp(item[1], UTC)
                    if name in ttls and moment - item[1] > ttls[name]:
                        values[name] = OnlineValue(None, event, "expired")
                    else:
                        values[name] = OnlineValue(item[0], event, "present")
                out[entity_id] = values
        return out
