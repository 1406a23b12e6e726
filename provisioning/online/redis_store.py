"""The embedded online store on Redis (chosen instead of SQLite when REDIS_URL is set).

One key per entity holding its values as a packed row (base.PackedRow) in msgpack, expiring with the longest TTL
of the view's features after its newest value. msgpack, not JSON: Redis's Lua cjson, which merged rows before,
kept 14 significant digits of a float (values and event times lost precision on every write) and read 3.0 back
as 3; and its C extension decodes a row about five times faster than JSON. Not marshal: the server may be
shared, and marshal is not for input others can write. Rows are merged here, not in Lua, under optimistic
concurrency (WATCH, then MULTI/EXEC, again when another client changed a key), so an older value still never
replaces a newer one. Rows in JSON (written before) are still read, and packed anew when next written.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import msgpack  # type: ignore[import-untyped]
import redis
from django.conf import settings

from provisioning.errors import TransientStoreError
from provisioning.offline.base import StepOutcome
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec, row_merge, unpack_rows

# Keys merged in one transaction: a conflict redoes only its chunk, and a chunk's rows travel in one round trip.
MERGE_KEYS = 500
MERGE_ATTEMPTS = 10
JSON_ROW = ord("{")  # a row of before; a msgpack row is an array, whose first byte is never this one


def _decode(packed: bytes | str) -> Any:
    """A packed row; bytes, as the client answers (it does not decode responses)."""
    return json.loads(packed) if packed[0] == JSON_ROW else msgpack.unpackb(packed)


# A store is made per request (backends.online_store_for), so the clients (each a connection pool) and the TTLs
# parsed from the view definition are kept per process; a read fetches the definition with the values, in the
# same MGET, and parses it again only when it changed.
_clients: dict[str, redis.Redis] = {}
_ttls_by_view: dict[tuple[str, str], tuple[bytes | str, dict[str, int]]] = {}


def _client(url: str) -> redis.Redis:
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=5)
    return client


class RedisOnlineStore(OnlineStore):
    kind = "local"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = self.options.get("redis_url") or settings.REDIS_URL
        self.client = _client(self.url)
        self.prefix = f"fcc:{self.environment}:"

    def update(self, view: OnlineViewSpec) -> StepOutcome:
        definition = json.dumps(
            {
                "name": view.name,
                "entity_type": view.entity_type,
                "features": [asdict(f) for f in view.features],
                "options": view.options,
            },
            sort_keys=True,
        )
        key = self.prefix + "view"
        if self.client.get(key) == definition.encode():
            return StepOutcome(request=[f"SET {key}"], changed=False)
        self.client.set(key, definition)
        return StepOutcome(request=[f"SET {key}: {len(view.features)} features"], changed=True)

    def describe(self) -> OnlineViewSpec | None:
        raw = self.client.get(self.prefix + "view")
        if raw is None:
            return None
        data = json.loads(raw)
        return OnlineViewSpec(
            name=data["name"],
            entity_type=data["entity_type"],
            features=tuple(OnlineFeature(**f) for f in data["features"]),
            options=data.get("options", {}),
        )

    def _ttls(self, definition: bytes | str | None) -> dict[str, int]:
        if definition is None:
            return {}
        cached = _ttls_by_view.get((self.url, self.prefix))
        if cached is not None and cached[0] == definition:
            return cached[1]
        ttls = {f["name"]: f["ttl_seconds"] for f in json.loads(definition)["features"]}
        _ttls_by_view[(self.url, self.prefix)] = (definition, ttls)
        return ttls

    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        ttls = self._ttls(self.client.get(self.prefix + "view"))
        longest = max(ttls.values(), default=48 * 3600)
        updates: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        for entity_id, event_time, values in rows:
            updates.setdefault(self.prefix + "e:" + entity_id, []).append((event_time.timestamp(), values))
        keys = list(updates)
        for start in range(0, len(keys), MERGE_KEYS):
            self._merge(keys[start : start + MERGE_KEYS], updates, longest)
        return len(rows)

    def _merge(self, keys: list[str], updates: dict[str, list[tuple[float, dict[str, Any]]]], longest: int) -> None:
        """Merges the updates of `keys` into their rows in one transaction, which fails (WatchError) when another
        client changed one of the keys after WATCH; it is then read and merged again."""
        with self.client.pipeline() as pipe:
            for _ in range(MERGE_ATTEMPTS):
                try:
                    pipe.watch(*keys)  # type: ignore[no-untyped-call]
                    current = pipe.mget(keys)
                    pipe.multi()
                    for key, packed in zip(keys, current, strict=True):
                        row = row_merge(_decode(packed) if packed else None, updates[key])
                        if row is None:  # no value, and none before: no key, which reads as missing
                            continue
                        common, _, stamps = row
                        pipe.set(key, msgpack.packb(row))
                        pipe.expireat(key, int(max([common, *stamps.values()]) + longest))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue
        raise TransientStoreError(
            f"online values of {len(keys)} entities were changed by other writers {MERGE_ATTEMPTS} times while "
            "being merged; the write may be retried"
        )

    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        moment = (now or datetime.now(UTC)).timestamp()
        definition, *raw = self.client.mget([self.prefix + "view", *(self.prefix + "e:" + e for e in entity_ids)])
        ttls = self._ttls(definition)
        return unpack_rows(zip(entity_ids, raw, strict=True), features, ttls, moment, _decode)
