"""The online store interface: the online resources (a feature view keyed by entity id), latest values, reads."""

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from provisioning.offline.base import StepOutcome


@dataclass(frozen=True)
class OnlineFeature:
    name: str
    dtype: str
    ttl_seconds: int
    component: str


@dataclass(frozen=True)
class OnlineViewSpec:
    """What the online store must serve: the online features of an environment, keyed by entity id."""

    name: str
    entity_type: str
    features: tuple[OnlineFeature, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OnlineValue:
    value: Any
    event_time: datetime | None
    status: str  # "present", "missing" or "expired"


class OnlineStore(ABC):
    kind: str = ""

    def __init__(self, *, environment: str, project: str, region: str, options: dict[str, Any] | None = None):
        self.environment = environment
        self.project = project
        self.region = region
        self.options = options or {}

    @abstractmethod
    def update(self, view: OnlineViewSpec) -> StepOutcome:
        """Creates or updates the online resources so they serve `view`."""

    @abstractmethod
    def describe(self) -> OnlineViewSpec | None:
        """The online resources as they live, None when there are none."""

    @abstractmethod
    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        """Writes the latest values: (entity id, event time, {feature: value}). Older values never win."""

    @abstractmethod
    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        """Values by entity id and feature; missing and expired values are explicit, never zero."""


MISSING = OnlineValue(None, None, "missing")


def unpack_rows(
    rows: Iterable[tuple[str, str | bytes | None]], features: Sequence[str], ttls: Mapping[str, int], moment: float
) -> dict[str, dict[str, OnlineValue]]:
    """Packed rows ({feature: [value, event epoch seconds]} as JSON), as the embedded stores keep them, into
    values: missing when absent, expired past the feature's TTL at `moment`, present otherwise."""
    times: dict[float, datetime] = {}  # an entity's features mostly share one event time
    out: dict[str, dict[str, OnlineValue]] = {}
    for entity_id, packed in rows:
        stored = json.loads(packed) if packed else {}
        values = {}
        for name in features:
            item = stored.get(name)
            if item is None:
                values[name] = MISSING
                continue
            stamp = item[1]
            event = times.get(stamp)
            if event is None:
                event = times[stamp] = datetime.fromtimestamp(stamp, UTC)
            ttl = ttls.get(name)
            if ttl is not None and moment - stamp > ttl:
                values[name] = OnlineValue(None, event, "expired")
            else:
                values[name] = OnlineValue(item[0], event, "present")
        out[entity_id] = values
    return out
