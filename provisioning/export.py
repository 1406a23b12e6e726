"""The DDL of an environment as files: BigQuery statements, and the DuckDB statements transpiled from them."""

from pathlib import Path

from catalog.models import Environment
from provisioning import desired
from provisioning.ddl import VIEW_NAME, create_dataset_sql, create_table_sql, to_duckdb

HEADER = "-- Generated from the {env} catalog by `python manage.py export_ddl --env {env}`.\n"


def render_ddl(environment: Environment) -> dict[str, str]:
    """File name -> content. Deterministic: the same catalog gives the same bytes."""
    tables = desired.all_tables(environment)
    if not tables:
        raise ValueError(f"{environment.name} has no features; load its catalog first (python manage.py load_catalog)")
    project, dataset = environment.gcp_project, environment.bigquery_dataset
    statements = {"00_dataset": create_dataset_sql(project, dataset, environment.region, environment.name)}
    for _, table in sorted(tables.items()):
        statements[table.name] = create_table_sql(project, dataset, table)
    statements[VIEW_NAME] = desired.training_view(environment)
    header = HEADER.format(env=environment.name)
    files = {}
    for name, sql in statements.items():
        files[f"bigquery/{name}.sql"] = f"{header}{sql};\n"
        files[f"duckdb/{name}.sql"] = header + "".join(f"{s};\n" for s in to_duckdb(sql))
    return files


def write_ddl(environment: Environment, output: Path) -> list[Path]:
    written = []
    for name, content in render_ddl(environment).items():
        path = output / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        written.append(path)
    return written
