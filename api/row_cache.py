"""Model instances for hot read paths, checked against their rows at every use and never stale.

A request of the online read endpoint needs its token (with the user) and its environment. Fetching them with
the ORM costs more than the rest of the request: most of it compiling the query, not running it. A `RowCache`
runs one plain SELECT of the same columns instead (its SQL built once per database vendor) and compares the
row with the row the cached values came from: unchanged, it returns a fresh instance made from those values
(callers may change it; nothing is shared between requests); changed or absent, it fetches with the ORM again.
So a revoked token, a deactivated user or a moved revision shows on the very next request, in every process.
"""

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from django.db import connections, models

M = TypeVar("M", bound=models.Model)
KEPT = 1024  # entries a cache keeps before it starts over


class RowCache(Generic[M]):
    """`fetch(key)` loads the instance with the ORM (None when absent); `related` names forward foreign keys
    whose rows the SELECT joins (so a change to them shows too) and whose instances `fetch` must have loaded
    (select_related)."""

    def __init__(
        self, model: type[M], key_field: str, fetch: Callable[[Any], M | None], related: Sequence[str] = ()
    ) -> None:
        self.model = model
        self.key_field = key_field
        self.fetch = fetch
        self.related = tuple(related)
        self._sql: dict[str, str] = {}
        self._model_list: list[type[models.Model]] | None = None
        self._entries: dict[Any, tuple[tuple[Any, ...], list[tuple[Any, ...]]]] = {}

    def _field(self, name: str) -> "models.Field[Any, Any]":
        field = self.model._meta.get_field(name)
        assert isinstance(field, models.Field)
        return field

    def _models(self) -> list[type[models.Model]]:
        if self._model_list is None:
            related: list[type[models.Model]] = [self._field(name).related_model for name in self.related]  # type: ignore[misc]
            self._model_list = [self.model, *related]
        return self._model_list

    def sql(self, alias: str) -> str:
        vendor = connections[alias].vendor
        sql = self._sql.get(vendor)
        if sql is None:
            quote = connections[alias].ops.quote_name
            meta = self.model._meta
            columns = [f"t0.{quote(str(f.column))}" for f in meta.concrete_fields]
            joins = []
            for i, (name, model) in enumerate(zip(self.related, self._models()[1:], strict=True), start=1):
                related = model._meta
                columns += [f"t{i}.{quote(str(f.column))}" for f in related.concrete_fields]
                joins.append(
                    f"JOIN {quote(related.db_table)} t{i} "
                    f"ON t{i}.{quote(str(related.pk.column))} = t0.{quote(str(self._field(name).column))}"
                )
            key = quote(str(self._field(self.key_field).column))
            table = quote(meta.db_table)
            sql = self._sql[vendor] = (
                f"SELECT {', '.join(columns)} FROM {table} t0 {' '.join(joins)} WHERE t0.{key} = %s"  # noqa: S608
            )
        return sql

    def _row(self, key: Any, alias: str) -> tuple[Any, ...] | None:
        with connections[alias].cursor() as cursor:
            cursor.execute(self.sql(alias), [key])
            row = cursor.fetchone()
        return tuple(row) if row is not None else None

    def get(self, key: Any, alias: str = "default") -> M | None:
        row = self._row(key, alias)
        if row is None:
            return None
        entry = self._entries.get(key)
        if entry is not None and entry[0] == row:
            return self._build(entry[1], alias)
        instance = self.fetch(key)
        if instance is None:
            return None
        # Cached only when the row did not change while the ORM read it (else the next use fetches again).
        if self._row(key, alias) == row:
            values = [tuple(getattr(instance, f.attname) for f in self.model._meta.concrete_fields)]
            for name in self.related:
                related = getattr(instance, name)
                values.append(tuple(getattr(related, f.attname) for f in related._meta.concrete_fields))
            if len(self._entries) >= KEPT:
                self._entries.clear()
            self._entries[key] = (row, values)
        return instance

    def _build(self, values: list[tuple[Any, ...]], alias: str) -> M:
        models_ = self._models()
        instance = self.model.from_db(alias, None, values[0])  # type: ignore[arg-type]
        for name, model, related_values in zip(self.related, models_[1:], values[1:], strict=True):
            setattr(instance, name, model.from_db(alias, None, related_values))  # type: ignore[arg-type]
        return instance

    def clear(self) -> None:
        self._entries.clear()
