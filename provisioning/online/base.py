"""The online store interface: the online resources (a feature view keyed by entity id), latest values, reads."""

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import repeat
from typing import Any, NamedTuple

from provisioning.offline.base import StepOutcome


@dataclass(frozen=True)
class OnlineFeature:
    name: str
    dtype: str
    ttl_seconds: int
    component: str


@dataclass(frozen=True)
class OnlineViewSpec:
    """What the online store must serve: the online features of an environment, keyed by entity id.

    `registered`: every feature of the environment's catalog (online or not), for stores that keep a feature
    registry besides what they serve (Vertex AI: a Feature per feature in its component's FeatureGroup). The
    embedded stores keep no registry and ignore it; it is not part of what describe() returns.
    """

    name: str
    entity_type: str
    features: tuple[OnlineFeature, ...]
    options: dict[str, Any] = field(default_factory=dict)
    registered: tuple[OnlineFeature, ...] = ()


class OnlineValue(NamedTuple):
    """One feature's value of one entity. A named tuple, not a dataclass: a read of 100 entities makes 3,200 of
    them, and a tuple is made about three times faster than a frozen dataclass."""

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

    def registered_features(self, components: Sequence[str]) -> dict[str, dict[str, OnlineFeature]] | None:
        """The features the store's registry holds for `components`: {component: {feature: feature}} (a
        component without registered features is absent). None when the store keeps no registry."""
        return None

    @abstractmethod
    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        """Writes the latest values: (entity id, event time, {feature: value}). Older values never win."""

    @abstractmethod
    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        """Values by entity id and feature; missing and expired values are explicit, never zero."""


MISSING = OnlineValue(None, None, "missing")


# A packed row, as the embedded stores keep an entity's values: (the event epoch seconds most of its values share,
# {feature: value}, {feature: event epoch seconds} of the values of another event time). An entity's values are
# mostly written together, so the last map is mostly empty, and a row decodes a quarter faster than the layout
# before, {feature: [value, event epoch seconds]} (a list per value), which is still read and is packed anew when
# the entity is next written.
PackedRow = tuple[float, dict[str, Any], dict[str, float]]
_ABSENT = object()  # not in the row; a None value is not absent (rows of old code may hold one)


def row_values(row: Any) -> dict[str, tuple[Any, float]]:
    """A decoded row, in either layout, as {feature: (value, event epoch seconds)}."""
    if type(row) is dict:
        return {name: (item[0], item[1]) for name, item in row.items()}
    common, values, stamps = row
    return {name: (value, stamps.get(name, common)) for name, value in values.items()}


def row_pack(values: Mapping[str, tuple[Any, float]]) -> PackedRow:
    """{feature: (value, event epoch seconds)} as a packed row, sharing the event time most values have."""
    counts: dict[float, int] = {}
    for _, stamp in values.values():
        counts[stamp] = counts.get(stamp, 0) + 1
    common = max(counts, key=counts.__getitem__, default=0.0)
    return (
        common,
        {name: value for name, (value, _) in values.items()},
        {name: stamp for name, (_, stamp) in values.items() if stamp != common},
    )


def row_merge(current: Any, updates: Iterable[tuple[float, Mapping[str, Any]]]) -> PackedRow | None:
    """`current` (a decoded row in either layout, or None) with `updates` ((event epoch seconds, {feature:
    value}), in the order written) merged in; None when the entity has no value at all.

    A feature takes a value of the same or a later event time than the one it has, so an older value never wins,
    whatever the order of the writes. A null is no value: it leaves the feature as it was (as a sync from
    BigQuery does); stored, it would read back as a "present" None.
    """
    merged = row_values(current) if current else {}
    for stamp, values in updates:
        for name, value in values.items():
            if value is None:
                continue
            old = merged.get(name)
            if old is None or old[1] <= stamp:
                merged[name] = (value, stamp)
    return row_pack(merged) if merged else None


# Event times by epoch seconds, shared by reads: the values of a minute's entities share one event time, and
# a datetime is made in a microsecond, a tenth of what unpacking an entity's 32 values costs.
_event_times: dict[float, datetime] = {}
_EVENT_TIMES_KEPT = 4096


def _event_time(stamp: float) -> datetime:
    event = _event_times.get(stamp)
    if event is None:
        if len(_event_times) >= _EVENT_TIMES_KEPT:
            _event_times.clear()
        event = _event_times[stamp] = datetime.fromtimestamp(stamp, UTC)
    return event


def unpack_rows(
    rows: Iterable[tuple[str, str | bytes | None]],
    features: Sequence[str],
    ttls: Mapping[str, int],
    moment: float,
    loads: Callable[[Any], Any] = json.loads,
) -> dict[str, dict[str, OnlineValue]]:
    """Packed rows (either layout, see PackedRow; JSON unless `loads` decodes another packing), as the embedded
    stores keep them, into values: missing when absent, expired past the feature's TTL at `moment`, present
    otherwise."""
    names = tuple(features)
    count = len(set(names))
    # (name, TTL) once per read, not a TTL lookup per value; no TTL: never expires.
    wanted = [(name, ttls.get(name)) for name in names]
    # An entity whose values share one event time no older than this has none expired.
    shortest = min((ttl for _, ttl in wanted if ttl is not None), default=math.inf)
    present = repeat("present")
    missing_row: dict[str, OnlineValue] = dict.fromkeys(names, MISSING)
    new = tuple.__new__  # an OnlineValue without its Python-level __new__: a third of the time a value takes
    out: dict[str, dict[str, OnlineValue]] = {}
    for entity_id, packed in rows:
        if not packed:
            out[entity_id] = missing_row.copy()
            continue
        row = loads(packed)
        if type(row) is dict:
            out[entity_id] = _unpack_pairs(row, wanted, moment)
            continue
        common, values, stamps = row
        event = _event_times.get(common) or _event_time(common)
        age = moment - common
        if age <= shortest and len(values) >= count and (not stamps or stamps.keys().isdisjoint(names)):
            # The common entity: every feature present, of one event time, none expired. Its values are made by
            # C-level iteration, a sixth faster than the loop below (allocating the 32 tuples is most of either).
            # The values are looked up first: a feature the entity lacks (KeyError, when the count did not tell)
            # then costs only lookups, and the loop says which.
            try:
                found = [*map(values.__getitem__, names)]
            except KeyError:
                pass
            else:
                triples = zip(found, repeat(event), present)
                entity = missing_row.copy()  # sized for the values: a dict grown one by one resizes three times
                entity.update(zip(names, map(new, repeat(OnlineValue), triples), strict=True))
                out[entity_id] = entity
                continue
        value_of, stamp_of = values.get, stamps.get
        entity = {}
        last = common
        for name, ttl in wanted:
            value = value_of(name, _ABSENT)
            if value is _ABSENT:
                entity[name] = MISSING
                continue
            stamp = stamp_of(name, common) if stamps else common
            if stamp != last:  # an entity's values mostly share one event time: its datetime and age once
                last, event, age = stamp, _event_times.get(stamp) or _event_time(stamp), moment - stamp
            if ttl is not None and age > ttl:
                entity[name] = new(OnlineValue, (None, event, "expired"))
            else:
                entity[name] = new(OnlineValue, (value, event, "present"))
        out[entity_id] = entity
    return out


def _unpack_pairs(row: dict[str, Any], wanted: list[tuple[str, int | None]], moment: float) -> dict[str, OnlineValue]:
    """An entity of a row in the layout before ({feature: [value, event epoch seconds]}), as it was read: not
    converted first, so these rows (a file's every row, until its entities are written again) read as fast."""
    get = row.get
    new = tuple.__new__
    values: dict[str, OnlineValue] = {}
    last: float | None = None
    event = datetime.min
    age = 0.0
    for name, ttl in wanted:
        item = get(name)
        if item is None:
            values[name] = MISSING
            continue
        value, stamp = item
        if stamp != last:
            last, event, age = stamp, _event_times.get(stamp) or _event_time(stamp), moment - stamp
        if ttl is not None and age > ttl:
            values[name] = new(OnlineValue, (None, event, "expired"))
        else:
            values[name] = new(OnlineValue, (value, event, "present"))
    return values
