"""The offline store interface. Every method is idempotent: create-if-absent, compare-before-write."""

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from provisioning.ddl import Column, TableSpec
from provisioning.errors import TransientStoreError


@dataclass(frozen=True)
class LiveColumn:
    name: str
    type: str  # in BigQuery terms
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class LiveTable:
    name: str
    columns: tuple[LiveColumn, ...]
    partition_column: str | None
    cluster_by: tuple[str, ...]
    require_partition_filter: bool
    labels: dict[str, str] = field(default_factory=dict)
    description: str = ""
    num_rows: int = 0
    num_bytes: int = 0

    def column(self, name: str) -> LiveColumn | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class StepOutcome:
    """What a store call sent and what it found: `changed` is False when the target already matched."""

    request: list[Any]
    changed: bool
    result: dict[str, Any] = field(default_factory=dict)


class OfflineStore(ABC):
    kind: str = ""

    def __init__(
        self, *, environment: str, project: str, dataset: str, region: str, options: dict[str, Any] | None = None
    ):
        self.environment = environment
        self.project = project
        self.dataset = dataset
        self.region = region
        self.options = options or {}

    @contextmanager
    def session(self) -> Iterator[None]:
        """Holds whatever connection the backend keeps open across the calls of one run (none by default)."""
        yield

    @abstractmethod
    def ensure_dataset(self) -> StepOutcome: ...

    @abstractmethod
    def create_table(self, table: TableSpec) -> StepOutcome: ...

    @abstractmethod
    def add_columns(self, table: str, columns: Sequence[Column]) -> StepOutcome: ...

    @abstractmethod
    def widen_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> StepOutcome: ...

    @abstractmethod
    def set_table_metadata(self, table: TableSpec) -> StepOutcome: ...

    @abstractmethod
    def replace_view(self, name: str, sql: str) -> StepOutcome: ...

    @abstractmethod
    def dry_run(self, sql: str) -> dict[str, Any]:
        """Validates a BigQuery statement on the target without running it; returns what it learned."""

    def preflight(self, statements: Sequence[str]) -> dict[str, Any]:
        """Dry-runs a run's statements before it changes anything; returns {"problems": [...], ...}.

        This default dry-runs each statement on its own; a backend that can check a whole sequence (one that
        creates a table, then alters it) overrides it.
        """
        problems = []
        for sql in statements:
            try:
                self.dry_run(sql)
            except TransientStoreError:
                raise  # retried by the runner, not reported as a problem of the plan
            except Exception as error:  # noqa: BLE001 - reported to the person, who acts on it
                problems.append(f"{sql.splitlines()[0][:120]}: {error}")
        return {"problems": problems, "checked": len(statements)}

    @abstractmethod
    def describe(self) -> dict[str, LiveTable]:
        """The live tables of the dataset (views excluded)."""

    @abstractmethod
    def views(self) -> list[str]: ...

    @abstractmethod
    def point_in_time(self, entities: Any, features: Sequence[Any]) -> Any:
        """For each entity row (a pyarrow Table with symbol, dte, event_timestamp and labels), each feature's latest
        value at or before event_timestamp within its TTL (`provisioning.retrieval` semantics); a pyarrow Table."""

    def point_in_time_batches(self, entities: Any, features: Sequence[Any], rows_per_batch: int) -> Iterator[Any]:
        """`point_in_time` of the entity rows (a pyarrow Table) `rows_per_batch` rows at a time, in their order: a
        caller that writes each batch out holds one batch's result, whatever the number of rows. One batch without
        rows for no entity rows. Stores override it to read every batch through one connection or query."""
        for start in range(0, max(entities.num_rows, 1), max(1, rows_per_batch)):
            yield self.point_in_time(entities.slice(start, rows_per_batch), features)

    @abstractmethod
    def replace_partitions(
        self, table: str, dates: Sequence[dt.date], files: Sequence[str], columns: Mapping[str, str]
    ) -> dict[dt.date, int]:
        """Replaces the rows of these DATE(ts_minute) partitions with the Parquet files' rows of the same dates,
        in one transaction. `columns` maps source column -> table column; columns of the table the source does
        not fill keep their values for the keys the source has. Returns the source rows written per date."""

    @abstractmethod
    def partition_row_counts(self, table: str, dates: Sequence[dt.date]) -> dict[dt.date, int]:
        """The table's rows per DATE(ts_minute) partition, for each of these dates (0 when empty)."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Runs a BigQuery-dialect query and returns its rows."""
