"""The embedded offline store: one DuckDB file per environment under DATA_DIR.

DuckDB has no partitioning, clustering or labels in its DDL, so the store keeps them in a metadata table and
describes tables with them, exactly as BigQuery's `get_table` does. DuckDB lets one process write a file at a
time, so connections are short-lived and a locked file is retried for a while.
"""

import datetime as dt
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import sqlglot
from django.conf import settings

from provisioning.ddl import (
    IDENTIFIER,
    Column,
    TableSpec,
    add_columns_sql,
    create_dataset_sql,
    create_table_sql,
    label_value,
    to_duckdb,
    widen_column_sql,
)
from provisioning.errors import PermanentStoreError
from provisioning.offline.base import LiveColumn, LiveTable, OfflineStore, StepOutcome

META_SCHEMA = "_fcc_meta"
DUCKDB_TO_BIGQUERY = {
    "VARCHAR": "STRING",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMP",
    "BIGINT": "INT64",
    "DOUBLE": "FLOAT64",
    "BOOLEAN": "BOOL",
    "DECIMAL(38,9)": "NUMERIC",
    "DATE": "DATE",
}
LOCK_WAIT_SECONDS = 30.0


class DuckDBOfflineStore(OfflineStore):
    kind = "duckdb"

    @property
    def path(self) -> Path:
        root = Path(self.options.get("path") or Path(settings.DATA_DIR) / "offline")
        root.mkdir(parents=True, exist_ok=True)
        # Not named after the dataset: DuckDB would then see a catalog and a schema of the same name.
        return root / f"{self.environment}-offline.duckdb"

    _session: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def session(self) -> Iterator[None]:
        """One connection for all the calls of a run (opening a DuckDB file costs tens of milliseconds)."""
        with self.connect() as connection:
            self._session = connection
            try:
                yield
            finally:
                self._session = None

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._session is not None:
            yield self._session
            return
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                connection = duckdb.connect(str(self.path), read_only=read_only and self.path.exists())
                break
            except duckdb.IOException as error:
                if "lock" not in str(error).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            # Partition dates are UTC dates, as BigQuery's DATE(ts_minute).
            connection.execute("SET TimeZone = 'UTC'")
            yield connection
        finally:
            connection.close()

    def _execute(self, statements: Sequence[str | tuple[str, list[Any]]]) -> None:
        """Runs the statements in one transaction: all of them apply or none does."""
        with self.connect() as connection:
            connection.execute("BEGIN")
            for statement in statements:
                if isinstance(statement, tuple):
                    connection.execute(*statement)
                else:
                    connection.execute(statement)
            connection.execute("COMMIT")

    def ensure_dataset(self) -> StepOutcome:
        sql = create_dataset_sql(self.project, self.dataset, self.region, self.environment)
        with self.connect() as connection:
            exists = connection.execute(
                "SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", [self.dataset]
            ).fetchone()
        statements = [
            *to_duckdb(sql),
            f'CREATE SCHEMA IF NOT EXISTS "{META_SCHEMA}"',
            f'CREATE TABLE IF NOT EXISTS "{META_SCHEMA}".table_options (dataset VARCHAR, table_name VARCHAR, '
            "partition_column VARCHAR, cluster_by VARCHAR, require_partition_filter BOOLEAN, description VARCHAR, "
            "labels VARCHAR, PRIMARY KEY (dataset, table_name))",
        ]
        self._execute(statements)
        return StepOutcome(request=[sql], changed=not (exists and exists[0]))

    def _metadata_statements(self, table: TableSpec) -> list[str | tuple[str, list[Any]]]:
        values: list[Any] = [
            self.dataset,
            table.name,
            table.partition_column,
            ",".join(table.cluster_by),
            table.require_partition_filter,
            table.description,
            # As BigQuery keeps them: values reduced to the characters labels allow.
            json.dumps({k: label_value(v) for k, v in table.labels}, sort_keys=True),
        ]
        statements: list[str | tuple[str, list[Any]]] = [
            (f'INSERT OR REPLACE INTO "{META_SCHEMA}".table_options VALUES (?, ?, ?, ?, ?, ?, ?)', values)  # noqa: S608
        ]
        for column in table.columns:
            if column.description:
                # COMMENT takes no parameters: the identifiers are validated names, the text is escaped.
                target = f'"{self.dataset}"."{table.name}"."{column.name}"'
                statements.append(f"COMMENT ON COLUMN {target} IS {_sql_string(column.description)}")
        return statements

    def create_table(self, table: TableSpec) -> StepOutcome:
        sql = create_table_sql(self.project, self.dataset, table)
        live = self.describe().get(table.name)
        if live is not None:
            missing = [c for c in table.columns if live.column(c.name) is None]
            if missing:
                return self.add_columns(table.name, missing)
            return StepOutcome(request=[sql], changed=False, result={"exists": True})
        self._execute([*to_duckdb(sql), *self._metadata_statements(table)])
        return StepOutcome(request=[sql], changed=True)

    def add_columns(self, table: str, columns: Sequence[Column]) -> StepOutcome:
        live = self.describe().get(table)
        if live is None:
            raise PermanentStoreError(f"table {self.dataset}.{table} does not exist", action=f"altering {table}")
        missing = [c for c in columns if live.column(c.name) is None]
        if not missing:
            return StepOutcome(request=[], changed=False, result={"exists": [c.name for c in columns]})
        sql = add_columns_sql(self.project, self.dataset, table, missing)
        self._execute(to_duckdb(sql))
        return StepOutcome(request=[sql], changed=True, result={"added": [c.name for c in missing]})

    def widen_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> StepOutcome:
        live = self.describe().get(table)
        if live is None:
            raise PermanentStoreError(f"table {self.dataset}.{table} does not exist", action=f"altering {table}")
        statements = []
        for name, new_type in columns:
            current = live.column(name)
            if current is not None and current.type != new_type:
                statements.append(widen_column_sql(self.project, self.dataset, table, name, new_type))
        if statements:
            self._execute([s for sql in statements for s in to_duckdb(sql)])
        return StepOutcome(request=statements, changed=bool(statements))

    def set_table_metadata(self, table: TableSpec) -> StepOutcome:
        live = self.describe().get(table.name)
        if live is None:
            raise PermanentStoreError(f"table {self.dataset}.{table.name} does not exist", action="setting options")
        if _metadata_matches(live, table):
            return StepOutcome(request=[], changed=False)
        statements = self._metadata_statements(table)
        self._execute(statements)
        return StepOutcome(request=list(statements), changed=True)

    def replace_view(self, name: str, sql: str) -> StepOutcome:
        # DuckDB keeps a view's text in its own canonical form: the view is replaced in a transaction and the
        # two forms compared, and an unchanged view is rolled back rather than rewritten.
        stored = "SELECT sql FROM duckdb_views() WHERE schema_name = ? AND view_name = ?"
        with self.connect() as connection:
            before = connection.execute(stored, [self.dataset, name]).fetchone()
            connection.execute("BEGIN")
            try:
                for statement in to_duckdb(sql):
                    connection.execute(statement)
                changed = connection.execute(stored, [self.dataset, name]).fetchone() != before
                connection.execute("COMMIT" if changed else "ROLLBACK")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return StepOutcome(request=[sql] if changed else [], changed=changed)

    def dry_run(self, sql: str) -> dict[str, Any]:
        try:
            statements = to_duckdb(sql)
            with self.connect() as connection:
                connection.execute("BEGIN")
                try:
                    for statement in statements:
                        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                            connection.execute(f"EXPLAIN {statement}")
                        else:
                            connection.execute(statement)
                finally:
                    connection.execute("ROLLBACK")
        except (sqlglot.errors.SqlglotError, duckdb.Error) as error:
            if isinstance(error, duckdb.IOException):
                raise  # a locked or unreadable file, not an invalid statement
            raise PermanentStoreError(f"invalid statement: {error}", action="dry run") from error
        return {"valid": True, "statements": statements}

    def preflight(self, statements: Sequence[str]) -> dict[str, Any]:
        """Runs the whole sequence in one transaction and rolls it back: every statement is checked against
        the objects the earlier ones create, and nothing is changed."""
        problems = []
        with self.connect() as connection:
            connection.execute("BEGIN")
            try:
                for sql in statements:
                    try:
                        for statement in to_duckdb(sql):
                            connection.execute(statement)
                    except duckdb.Error as error:
                        problems.append(f"{sql.splitlines()[0][:120]}: {error}")
                        break
            finally:
                connection.execute("ROLLBACK")
        return {"problems": problems, "checked": len(statements)}

    def replace_partitions(
        self, table: str, dates: Sequence[dt.date], files: Sequence[str], columns: Mapping[str, str]
    ) -> dict[dt.date, int]:
        """Replaces the rows of these partitions with the files' rows of the same dates, in one transaction.

        `columns` maps source column -> table column (a feature's current version column). Columns of the table
        the source does not fill (earlier versions, deprecated features) keep their values for the keys the
        source has. Returns the source rows per date that were written.
        """
        target = f'"{self.dataset}"."{ident_checked(table)}"'
        keys = ("symbol", "ts_minute", "dte")
        names = list(columns)
        loaded = {columns[source] for source in names}
        in_dates = "CAST(ts_minute AS DATE) IN (SELECT unnest(?::DATE[]))"
        day_list = list(dates)
        with self.connect() as connection:
            live = [
                row[0]
                for row in connection.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                    "ORDER BY ordinal_position",
                    [self.dataset, table],
                ).fetchall()
            ]
            retained = [c for c in live if c not in loaded and c not in keys]
            select = ", ".join(
                [*(f's."{ident_checked(source)}"' for source in names), *(f'o."{ident_checked(c)}"' for c in retained)]
            )
            insert = ", ".join(f'"{ident_checked(c)}"' for c in [*(columns[s] for s in names), *retained])
            key_list = ", ".join(f'"{k}"' for k in keys)
            # The count and the insert read the same files: their footers are parsed once.
            connection.execute("SET parquet_metadata_cache = true")
            connection.execute("BEGIN")
            try:
                counts = dict(
                    connection.execute(
                        f"SELECT CAST(ts_minute AS DATE), count(*) FROM read_parquet(?) WHERE {in_dates} GROUP BY 1",  # noqa: S608
                        [list(files), day_list],
                    ).fetchall()
                )
                if retained:
                    kept = ", ".join(f'"{c}"' for c in [*keys, *retained])
                    connection.execute(
                        f"CREATE TEMP TABLE fcc_kept AS SELECT {kept} FROM {target} WHERE {in_dates}",  # noqa: S608
                        [day_list],
                    )
                connection.execute(f"DELETE FROM {target} WHERE {in_dates}", [day_list])  # noqa: S608
                # Without columns to keep (the source fills every column) the join would find nothing to carry.
                kept_join = f"LEFT JOIN fcc_kept AS o USING ({key_list}) " if retained else ""
                connection.execute(
                    f"INSERT INTO {target} ({insert}) SELECT {select} FROM read_parquet(?) AS s "  # noqa: S608
                    f"{kept_join}WHERE {in_dates.replace('ts_minute', 's.ts_minute')}",
                    [list(files), day_list],
                )
                if retained:
                    connection.execute("DROP TABLE fcc_kept")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
        return {day: int(counts.get(day, 0)) for day in day_list}

    def partition_row_counts(self, table: str, dates: Sequence[dt.date]) -> dict[dt.date, int]:
        target = f'"{self.dataset}"."{ident_checked(table)}"'
        with self.connect(read_only=True) as connection:
            rows = connection.execute(
                f"SELECT CAST(ts_minute AS DATE), count(*) FROM {target} "  # noqa: S608
                "WHERE CAST(ts_minute AS DATE) IN (SELECT unnest(?::DATE[])) GROUP BY 1",
                [list(dates)],
            ).fetchall()
        counts = dict(rows)
        return {day: int(counts.get(day, 0)) for day in dates}

    def point_in_time(self, entities: Any, features: Sequence[Any]) -> Any:
        from provisioning.retrieval import DuckDBSource, memory_plan, retrieve_point_in_time

        plan = memory_plan(entities.num_rows, features)
        with self.connect(read_only=True) as connection:
            source = DuckDBSource(
                connection, self.dataset, keep_bytes=plan.keep_bytes, columns_per_read=plan.columns_per_read
            )
            return retrieve_point_in_time(entities, features, source, readers=plan.readers)

    def point_in_time_batches(self, entities: Any, features: Sequence[Any], rows_per_batch: int) -> Iterator[Any]:
        from provisioning.retrieval import DuckDBSource, memory_plan, retrieve_point_in_time

        # One connection for every batch: while it is open no other process can write the file (DuckDB locks it
        # for a writer), so every batch reads the same data, and the blocks a batch's result leaves room for in
        # the memory budget are read once.
        plan = memory_plan(min(entities.num_rows, max(1, rows_per_batch)), features)
        with self.connect(read_only=True) as connection:
            source = DuckDBSource(
                connection, self.dataset, keep_bytes=plan.keep_bytes, columns_per_read=plan.columns_per_read
            )
            for start in range(0, max(entities.num_rows, 1), max(1, rows_per_batch)):
                yield retrieve_point_in_time(
                    entities.slice(start, rows_per_batch), features, source, readers=plan.readers
                )

    def describe(self) -> dict[str, LiveTable]:
        if not self.path.exists():
            return {}
        with self.connect(read_only=True) as connection:
            has_meta = connection.execute(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                [META_SCHEMA, "table_options"],
            ).fetchone()
            columns = connection.execute(
                "SELECT c.table_name, c.column_name, c.data_type, c.is_nullable, dc.comment "
                "FROM information_schema.columns c JOIN information_schema.tables t "
                "ON t.table_schema = c.table_schema AND t.table_name = c.table_name "
                "LEFT JOIN duckdb_columns() dc ON dc.schema_name = c.table_schema AND dc.table_name = c.table_name "
                "AND dc.column_name = c.column_name "
                "WHERE c.table_schema = ? AND t.table_type = 'BASE TABLE' ORDER BY c.table_name, c.ordinal_position",
                [self.dataset],
            ).fetchall()
            options = {}
            if has_meta and has_meta[0]:
                for row in connection.execute(
                    "SELECT table_name, partition_column, cluster_by, require_partition_filter, description, labels "  # noqa: S608
                    f'FROM "{META_SCHEMA}".table_options WHERE dataset = ?',
                    [self.dataset],
                ).fetchall():
                    options[row[0]] = row[1:]
            sizes = {
                row[0]: (int(row[1] or 0), int(row[2] or 0))
                for row in connection.execute(
                    "SELECT table_name, estimated_size, column_count * estimated_size * 8 FROM duckdb_tables() "
                    "WHERE schema_name = ?",
                    [self.dataset],
                ).fetchall()
            }
        tables: dict[str, list[LiveColumn]] = {}
        for table, column, dtype, nullable, comment in columns:
            tables.setdefault(table, []).append(
                LiveColumn(
                    column, DUCKDB_TO_BIGQUERY.get(dtype, dtype), required=nullable == "NO", description=comment or ""
                )
            )
        live = {}
        for name, cols in tables.items():
            partition, cluster, require, description, labels = options.get(name, (None, "", False, "", "{}"))
            rows, size = sizes.get(name, (0, 0))
            live[name] = LiveTable(
                name=name,
                columns=tuple(cols),
                partition_column=partition,
                cluster_by=tuple(c for c in (cluster or "").split(",") if c),
                require_partition_filter=bool(require),
                labels=json.loads(labels or "{}"),
                description=description or "",
                num_rows=rows,
                num_bytes=size,
            )
        return live

    def views(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.connect(read_only=True) as connection:
            rows = connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = ? AND table_type = 'VIEW'",
                [self.dataset],
            ).fetchall()
        return sorted(r[0] for r in rows)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        statement = to_duckdb(sql)[0]
        with self.connect(read_only=True) as connection:
            return connection.execute(statement).fetchall()


def _metadata_matches(live: LiveTable, table: TableSpec) -> bool:
    described = {c.name: c.description for c in live.columns}
    return (
        live.partition_column == table.partition_column
        and live.cluster_by == tuple(table.cluster_by)
        and live.require_partition_filter == table.require_partition_filter
        and live.description == table.description
        and live.labels == {k: label_value(v) for k, v in table.labels}
        and all(described.get(c.name, c.description) == c.description for c in table.columns if c.description)
    )


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''").replace("\x00", "") + "'"


def ident_checked(name: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a valid identifier")
    return name
