"""The online store interface: the online resources (a feature view keyed by entity id), latest values, reads."""

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
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
