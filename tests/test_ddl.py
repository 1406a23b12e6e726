from pathlib import Path

import pytest
from django.conf import settings

from catalog.models import Environment
from catalog.services import catalog_load
from provisioning.ddl import Column, TableSpec, add_columns_sql, create_table_sql, ident, literal, to_duckdb
from provisioning.export import render_ddl

DDL_DIR = Path(settings.BASE_DIR) / "ddl" / "prod"


@pytest.mark.django_db
def test_committed_prod_ddl_is_current(reference, specs):
    catalog_load(specs_dir=Path(settings.FCC_SPECS_DIR), environment_names=["prod"])
    files = render_ddl(Environment.objects.get(name="prod"))
    committed = {str(p.relative_to(DDL_DIR)): p.read_text() for p in DDL_DIR.rglob("*.sql")}
    assert sorted(committed) == sorted(files)
    stale = [name for name, content in files.items() if committed[name] != content]
    assert not stale, f"ddl/prod is stale ({stale}); run: python manage.py export_ddl --env prod"


def test_tables_are_partitioned_clustered_and_labelled():
    sql = (DDL_DIR / "bigquery" / "c6_features.sql").read_text()
    assert "PARTITION BY DATE(`ts_minute`)" in sql
    assert "CLUSTER BY `symbol`, `dte`" in sql
    assert "require_partition_filter=TRUE" in sql
    assert '("component", "c6")' in sql
    assert '("team", "team-correlation")' in sql
    assert '("environment", "prod")' in sql
    assert sql.count(" FLOAT64") + sql.count(" INT64") + sql.count(" BOOL") + sql.count(" STRING") >= 220


@pytest.mark.parametrize(
    "hostile",
    ["x; DROP TABLE t", "a`b", "name--", "ts minute", "пример", "a\x00b", "`", "x" * 10_000],
)
def test_hostile_identifiers_never_reach_ddl(hostile):
    with pytest.raises(ValueError, match="not a valid identifier"):
        ident(hostile)


def test_hostile_descriptions_are_escaped_literals():
    text = "quote \" backslash \\ newline \n nul \x00 end'; DROP TABLE x; --"
    table = TableSpec("c1_features", (Column("symbol", "STRING", required=True), Column("v", "FLOAT64", text)))
    sql = create_table_sql("my-project", "d", table)
    assert literal(text) in sql
    duck = to_duckdb(sql)
    assert len(duck) == 1  # still one statement: the text did not break out of its literal
    assert add_columns_sql("my-project", "d", "t", [Column("v", "FLOAT64")]).count(";") == 0
