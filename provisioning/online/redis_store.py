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
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec

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


class RedisOnlineStore(OnlineStore):
    kind = "local"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        url = self.options.get("redis_url") or settings.REDIS_URL
        self.client = redis.Redis.from_url(url, socket_timeout=5)
        self.prefix = f"fcc:{self.environment}:"
        self._merge = self.client.register_script(MERGE)
        self._view: OnlineViewSpec | None = None

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
        self._view = None
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

    def _ttls(self) -> dict[str, int]:
        if self._view is None:
            self._view = self.describe()
        return {f.name: f.ttl_seconds for f in self._view.features} if self._view else {}

    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        ttls = self._ttls()
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
        ttls = self._ttls()
        moment = (now or datetime.now(UTC)).timestamp()
        raw = self.client.mget([self.prefix + "e:" + e for e in entity_ids])
        out: dict[str, dict[str, OnlineValue]] = {}
        for entity_id, blob in zip(entity_ids, raw, strict=True):
            stored = json.loads(blob) if blob else {}
            values = {}
            for name in features:
                item = stored.get(name)
                if item is None:
                    values[name] = OnlineValue(None, None, "missing")
                elif name in ttls and moment - item[1] > ttls[name]:
                    values[name] = OnlineValue(None, datetime.fromtimestamp(item[1], UTC), "expired")
                else:
                    values[name] = OnlineValue(item[0], datetime.fromtimestamp(item[1], UTC), "present")
            out[entity_id] = values
        return out
