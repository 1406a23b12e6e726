"""Online reads for in-process callers and the API: values with their event time; missing and expired values
are explicit, never zero."""

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from catalog.entity_ids import entity_parts
from catalog.errors import Problem, SpecValidationError
from catalog.models import Environment, Feature
from provisioning.backends import online_store_for
from provisioning.online.base import OnlineStore, OnlineValue

MAX_ENTITIES = 1000
# An entity id as entity_parts reads it, ASCII digits only; anything else is checked by entity_parts itself.
_PLAIN_ENTITY_ID = re.compile(r"[A-Z][A-Z0-9]{0,31}_([0-9]{12})_[0-9]{1,4}").fullmatch


class OnlineReadError(SpecValidationError):
    code = "invalid_online_read"


@dataclass(frozen=True)
class OnlineRow:
    entity_id: str
    values: dict[str, OnlineValue]

    def as_dict(self, times: dict[int, str] | None = None) -> dict[str, Any]:
        """The row as the API answers it. `times` keeps the ISO text of each event time object while the rows
        live (by identity: equal times in other zones format apart); the stores share one object among the
        values of an event time, and formatting it costs more than the rest of a value."""
        if times is None:
            times = {}
        values = {}
        for name, (value, event, status) in self.values.items():
            if event is None:
                values[name] = {"value": value, "event_time": None, "status": status}
                continue
            text = times.get(id(event))
            if text is None:
                text = times[id(event)] = event.isoformat()
            values[name] = {"value": value, "event_time": text, "status": status}
        return {"entity_id": self.entity_id, "values": values}


def online_rows_as_dicts(rows: Sequence[OnlineRow]) -> list[dict[str, Any]]:
    times: dict[int, str] = {}
    return [row.as_dict(times) for row in rows]


_online_names: dict[tuple[int, int, Any], frozenset[str]] = {}


def online_feature_names(environment: Environment) -> frozenset[str]:
    """The environment's online features, cached per revision: the catalog changes only by moving the revision,
    and a read must not pay a catalog query."""
    # The revision's time too: a database recreated from scratch (tests) reuses ids and revision numbers.
    key = (environment.pk, environment.revision, environment.updated_at)
    names = _online_names.get(key)
    if names is None:
        names = frozenset(
            Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE, online=True).values_list(
                "name", flat=True
            )
        )
        if len(_online_names) > 64:
            _online_names.clear()
        _online_names[key] = names
    return names


def _entity_id_problem(value: str) -> str | None:
    """Why `value` is not an entity id (entity_parts' message), None when it is one. The common case without
    entity_parts: strptime alone costs more than the store's read of the row."""
    match = _PLAIN_ENTITY_ID(value)
    if match is not None:
        minute = match[1]
        try:
            dt.datetime(int(minute[:4]), int(minute[4:6]), int(minute[6:8]), int(minute[8:10]), int(minute[10:]))
        except ValueError:
            pass
        else:
            return None
    try:
        entity_parts(value)
    except ValueError as error:
        return str(error)
    return None


# Stores made once per process for the embedded backends (a store is cheap to make, but not free: the path is
# resolved and its folder made, the Redis client and script looked up). Vertex stores are made per read: they
# keep the served view they read once, and a cached one would not see a later update of the view.
_stores: dict[tuple[Any, ...], OnlineStore] = {}


def _online_store(environment: Environment) -> OnlineStore:
    key = (
        environment.name,
        environment.gcp_project,
        environment.region,
        settings.FCC_ONLINE_STORE,
        settings.REDIS_URL,
        repr(settings.FCC_STORES.get(environment.name)),
    )
    store = _stores.get(key)
    if store is None:
        store = online_store_for(environment)
        if store.kind == "local":
            if len(_stores) > 64:
                _stores.clear()
            _stores[key] = store
    return store


def online_features_read(
    *, environment: Environment, entity_ids: Sequence[str], features: Sequence[str]
) -> list[OnlineRow]:
    problems = []
    if not entity_ids:
        problems.append(Problem("entity_ids", "required", "give at least one entity id"))
    if len(entity_ids) > MAX_ENTITIES:
        problems.append(Problem("entity_ids", "max_items", f"at most {MAX_ENTITIES} entities a request"))
    for i, value in enumerate(entity_ids[:MAX_ENTITIES]):
        problem = _entity_id_problem(value)
        if problem is not None:
            problems.append(Problem(f"entity_ids[{i}]", "entity_id", problem))
    online = online_feature_names(environment)
    for i, name in enumerate(features):
        if name not in online:
            problems.append(
                Problem(f"features[{i}]", "not_online", f"{name!r} is not an online feature in {environment.name}")
            )
    if problems:
        raise OnlineReadError(f"{len(problems)} problem(s) in the read request", problems=problems)
    values = _online_store(environment).read(list(entity_ids), list(features))
    return [OnlineRow(entity, values.get(entity, {})) for entity in entity_ids]
