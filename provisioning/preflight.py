"""Preflight: every statement a run will send, dry-run on the target before anything is changed."""

from collections.abc import Mapping
from typing import Any

from catalog.models import Component, Environment
from provisioning import desired
from provisioning.ddl import Column, TableSpec, add_columns_sql, create_dataset_sql, create_table_sql, widen_column_sql
from provisioning.errors import PermanentStoreError, StoreError, TransientStoreError
from provisioning.offline.base import LiveTable, OfflineStore


def plan_statements(
    environment: Environment,
    plan: dict[str, Any],
    tables: Mapping[str, TableSpec] | None = None,
    live: Mapping[str, LiveTable] | None = None,
) -> list[tuple[int, str]]:
    """(plan step index, BigQuery statement) for every DDL statement the plan's steps send. With the `live`
    tables, also what the first view step creates ahead for newer approved revisions (desired.ahead_of_stores)."""
    project, dataset = environment.gcp_project, environment.bigquery_dataset
    statements: list[tuple[int, str]] = []
    ahead_done = False
    for index, step in enumerate(plan["steps"]):
        kind = step["kind"]
        view_step = kind in ("replace_view", "update_online_store")
        if view_step and not ahead_done and tables is not None and live is not None:
            ahead_done = True
            to_create, to_add = desired.ahead_of_stores(tables, live, plan["steps"])
            statements.extend((index, create_table_sql(project, dataset, table)) for table in to_create)
            statements.extend((index, add_columns_sql(project, dataset, name, cols)) for name, cols in to_add.items())
        if kind == "ensure_dataset":
            statements.append((index, create_dataset_sql(project, dataset, environment.region, environment.name)))
        elif kind == "create_table":
            if tables is not None:
                table = tables[step["component"]]
            else:
                component = Component.objects.select_related("entity_type", "owner").get(key=step["component"])
                table = desired.component_table(environment, component)
            statements.append((index, create_table_sql(project, dataset, table)))
        elif kind == "add_columns":
            columns = [Column(c["name"], c["type"]) for c in step["columns"]]
            statements.append((index, add_columns_sql(project, dataset, step["table"], columns)))
        elif kind == "widen_columns":
            for column in step["columns"]:
                statements.append(
                    (index, widen_column_sql(project, dataset, step["table"], column["name"], column["new"]))
                )
        elif kind == "replace_view":
            statements.append((index, desired.training_view(environment)))
    return statements


def preflight(
    store: OfflineStore, environment: Environment, plan: dict[str, Any], tables: Mapping[str, TableSpec] | None = None
) -> dict[str, Any]:
    """Dry-runs what can be checked now. A statement on an object the same plan creates first is checked
    only by the engine that can see it (DuckDB runs them all in one rolled-back transaction)."""
    problems: list[str] = []
    try:
        live = store.describe() if tables is not None else None
        statements = plan_statements(environment, plan, tables, live)
        result = store.preflight([sql for _, sql in statements])
    except TransientStoreError:
        raise  # the service did not answer: the runner retries the preflight, it is no verdict on the plan
    except StoreError as error:
        raise PermanentStoreError(f"preflight failed: {error}") from error
    problems.extend(result.get("problems", []))
    if problems:
        raise PermanentStoreError("preflight failed: " + "; ".join(problems))
    return {"statements": len(statements), **result}
