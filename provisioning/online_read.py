"""Online reads for in-process callers and the API: values with their event time; missing and expired values
are explicit, never zero."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from catalog.entity_ids import entity_parts
from catalog.errors import Problem, SpecValidationError
from catalog.models import Environment, Feature
from provisioning.backends import online_store_for
from provisioning.online.base import OnlineValue

MAX_ENTITIES = 1000


class OnlineReadError(SpecValidationError):
    code = "invalid_online_read"


@dataclass(frozen=True)
class OnlineRow:
    entity_id: str
    values: dict[str, OnlineValue]

    def as_dict(self) -> dict[str, Any]:
        return {
            "entity_id": self.entity_id,
            "values": {
                name: {
                    "value": v.value,
                    "event_time": v.event_time.isoformat() if v.event_time else None,
                    "status": v.status,
                }
                for name, v in self.values.items()
            },
        }


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


def online_features_read(
    *, environment: Environment, entity_ids: Sequence[str], features: Sequence[str]
) -> list[OnlineRow]:
    problems = []
    if not entity_ids:
        problems.append(Problem("entity_ids", "required", "give at least one entity id"))
    if len(entity_ids) > MAX_ENTITIES:
        problems.append(Problem("entity_ids", "max_items", f"at most {MAX_ENTITIES} entities a request"))
    for i, value in enumerate(entity_ids[:MAX_ENTITIES]):
        try:
            entity_parts(value)
        except ValueError as error:
            problems.append(Problem(f"entity_ids[{i}]", "entity_id", str(error)))
    online = online_feature_names(environment)
    for i, name in enumerate(features):
        if name not in online:
            problems.append(
                Problem(f"features[{i}]", "not_online", f"{name!r} is not an online feature in {environment.name}")
            )
    if problems:
        raise OnlineReadError(f"{len(problems)} problem(s) in the read request", problems=problems)
    values = online_store_for(environment).read(list(entity_ids), list(features))
    return [OnlineRow(entity, values.get(entity, {})) for entity in entity_ids]
