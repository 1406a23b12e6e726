"""The embedded online store on Redis (chosen instead of SQLite when REDIS_URL is set).

One key per entity holding a packed JSON object {feature: [value, event epoch seconds]}, merged by a Lua
script so an older value never replaces a newer one, and expiring with the longest TTL of its features.
"""

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import redis
from django.conf import settings

from provisioning.offline.base import StepOutcome
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec, unpack_rows

MERGE = """
local current = redis.call('GET', KEYS[1])
local merged = {}
if current then merged = cjson.decode(current) end
local incoming = cjson.decode(ARGV[1])
for name, item in pairs(incoming) do
  local old = merged[name]
  if (not old) or old[2] <= item[2] then merged[name] = item end
end
redis.call('SET', KEYS[1], cjson.encode(merged))
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return 1
"""


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
        self._merge = self.client.register_script(MERGE)

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
        pipe = self.client.pipeline(transaction=False)
        for entity_id, event_time, values in rows:
            stamp = event_time.timestamp()
            # A null is no value: it never replaces one (as a sync from BigQuery behaves).
            packed = json.dumps({name: [value, stamp] for name, value in values.items() if value is not None})
            self._merge(keys=[self.prefix + "e:" + entity_id], args=[packed, int(stamp + longest)], client=pipe)
        pipe.execute()
        return len(rows)

    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        moment = (now or datetime.now(UTC)).timestamp()
        definition, *raw = self.client.mget([self.prefix + "view", *(self.prefix + "e:" + e for e in entity_ids)])
        ttls = self._ttls(definition)
        return unpack_rows(zip(entity_ids, raw, strict=True), features, ttls, moment)
