"""The BigQuery offline store: the real google-cloud-bigquery client, one dataset per environment.

Changes are the DDL of provisioning/ddl.py run as query jobs, as the service takes them; each is preceded by
a read of the live dataset, table or view, so an unchanged target is not written. The client's own retries
are bounded by `retry_deadline_seconds` and whole-job retries are off: the provisioning runner retries
transient errors itself, with backoff, and records each attempt. Google's exceptions become the store's
errors here, so the runner never imports a Google library.

Options (FCC_STORES[env]["offline_options"]):
    api_endpoint            an emulator's address ("http://127.0.0.1:9050"); anonymous credentials then
    location                where jobs run (default: the environment's region)
    retry_deadline_seconds  how long the client retries one API call (default 60)
    job_timeout_seconds     how long to wait for a query job to finish (default 300)
"""

import datetime as dt
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any

import requests
import sqlglot
from google.api_core import exceptions as google_exceptions
from google.api_core.client_options import ClientOptions
from google.auth import exceptions as auth_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery
from sqlglot import exp

from provisioning.ddl import (
    IDENTIFIER,
    Column,
    TableSpec,
    add_columns_sql,
    create_dataset_sql,
    create_table_sql,
    label_value,
    set_column_description_sql,
    set_table_options_sql,
    widen_column_sql,
)
from provisioning.errors import PermanentStoreError, TransientStoreError
from provisioning.offline.base import LiveColumn, LiveTable, OfflineStore, StepOutcome

KEY_COLUMNS = ("symbol", "ts_minute", "dte")
# What a statement of provisioning/ddl.py creates: `project.dataset` or `project.dataset.table`.
# Statements that create or change an object: a later statement on it cannot be dry-run before they are applied.
CREATES = re.compile(r"\s*(?:CREATE (?:SCHEMA|TABLE) IF NOT EXISTS|ALTER TABLE) `([^`]+)`")
IN_DATES = "DATE({column}) IN UNNEST(@dates)"
# The roles the story lists: changing datasets, tables and views; running jobs (queries, DDL, dry runs).
DATA_EDITOR = "roles/bigquery.dataEditor"
JOB_USER = "roles/bigquery.jobUser"
# The REST API reports legacy type names; the catalog and the DuckDB store speak GoogleSQL's.
LEGACY_TYPES = {"INTEGER": "INT64", "FLOAT": "FLOAT64", "BOOLEAN": "BOOL", "RECORD": "STRUCT"}
TRANSIENT = (
    google_exceptions.TooManyRequests,
    google_exceptions.ServiceUnavailable,
    google_exceptions.InternalServerError,
    google_exceptions.BadGateway,
    google_exceptions.GatewayTimeout,  # DeadlineExceeded is one
    google_exceptions.RetryError,
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    auth_exceptions.TransportError,
    TimeoutError,  # also concurrent.futures.TimeoutError: a job that did not finish in time
    ConnectionError,
)


@dataclass(frozen=True)
class BigQueryOptions:
    api_endpoint: str | None = None
    location: str | None = None
    retry_deadline_seconds: float = 60.0
    job_timeout_seconds: float = 300.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> "BigQueryOptions":
        raw = dict(raw or {})
        allowed = {f.name for f in fields(cls)}
        unknown = set(raw) - allowed
        if unknown:
            raise ValueError(f"unknown BigQuery offline_options {sorted(unknown)}; allowed: {sorted(allowed)}")
        for key in ("api_endpoint", "location"):
            if raw.get(key) is not None and (not isinstance(raw[key], str) or not raw[key]):
                raise ValueError(f"BigQuery offline_options[{key!r}] must be a non-empty string")
        endpoint = raw.get("api_endpoint")
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            # Without a scheme the client assumes TLS, which an emulator does not speak.
            raise ValueError(f"BigQuery offline_options['api_endpoint'] needs http:// or https://, got {endpoint!r}")
        for key in ("retry_deadline_seconds", "job_timeout_seconds"):
            value = raw.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"BigQuery offline_options[{key!r}] must be a positive number, got {value!r}")
            raw[key] = float(value)
        return cls(**raw)


class BigQueryOfflineStore(OfflineStore):
    kind = "bigquery"

    def __init__(
        self, *, environment: str, project: str, dataset: str, region: str, options: dict[str, Any] | None = None
    ):
        super().__init__(environment=environment, project=project, dataset=dataset, region=region, options=options)
        self.settings = BigQueryOptions.parse(options)

    # The client -----------------------------------------------------------------------------------------

    @cached_property
    def client(self) -> bigquery.Client:
        with self._translated("connecting to BigQuery", DATA_EDITOR):
            if self.settings.api_endpoint:
                return bigquery.Client(
                    project=self.project,
                    location=self.location,
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options=ClientOptions(api_endpoint=self.settings.api_endpoint),
                )
            return bigquery.Client(project=self.project, location=self.location)

    @property
    def location(self) -> str:
        return self.settings.location or self.region

    @cached_property
    def retry(self) -> Any:
        return bigquery.DEFAULT_RETRY.with_timeout(self.settings.retry_deadline_seconds)

    @property
    def timeout(self) -> float:
        """One HTTP request may take no longer than the whole retry budget."""
        return self.settings.retry_deadline_seconds

    @contextmanager
    def _translated(self, action: str, role: str) -> Iterator[None]:
        """Google's exceptions as the store's: transient ones may pass on retry, permanent ones need a person."""
        try:
            yield
        except google_exceptions.Forbidden as error:
            needed = _role_for(error, role)
            where = f"project {self.project}" if needed == JOB_USER else f"dataset {self.project}.{self.dataset}"
            raise PermanentStoreError(
                f"BigQuery denied {action}: {_message(error)}. Grant the provisioning service account {needed} "
                f"on {where}.",
                action=action,
            ) from error
        except TRANSIENT as error:
            raise TransientStoreError(f"BigQuery {action}: {_message(error)}", action=action) from error
        except google_exceptions.GoogleAPICallError as error:
            # BadRequest, NotFound, Conflict, Unauthorized, ...: the request itself is wrong.
            raise PermanentStoreError(f"BigQuery {action}: {_message(error)}", action=action) from error
        except auth_exceptions.GoogleAuthError as error:
            raise PermanentStoreError(
                f"BigQuery {action}: no usable Google credentials ({error}); set GOOGLE_APPLICATION_CREDENTIALS "
                "or run as a service account",
                action=action,
            ) from error

    def _run(self, sql: str, *, action: str, role: str = DATA_EDITOR) -> bigquery.QueryJob:
        """Runs one statement as a query job and waits for it."""
        with self._translated(action, role):
            job = self.client.query(sql, retry=self.retry, timeout=self.timeout, job_retry=None)
            job.result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
        return job

    def _table_id(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    def _get_table(self, table: str) -> bigquery.Table | None:
        with self._translated(f"reading table {self._table_id(table)}", DATA_EDITOR):
            try:
                return self.client.get_table(self._table_id(table), retry=self.retry, timeout=self.timeout)
            except google_exceptions.NotFound:
                return None

    def _existing_table(self, table: str) -> bigquery.Table:
        live = self._get_table(table)
        if live is None:
            raise PermanentStoreError(f"table {self.dataset}.{table} does not exist", action=f"altering {table}")
        return live

    # The interface --------------------------------------------------------------------------------------

    def ensure_dataset(self) -> StepOutcome:
        sql = create_dataset_sql(self.project, self.dataset, self.region, self.environment)
        with self._translated(f"reading dataset {self.project}.{self.dataset}", DATA_EDITOR):
            try:
                self.client.get_dataset(f"{self.project}.{self.dataset}", retry=self.retry, timeout=self.timeout)
                return StepOutcome(request=[], changed=False, result={"exists": True})
            except google_exceptions.NotFound:
                pass
        job = self._run(sql, action=f"creating dataset {self.project}.{self.dataset}")
        return StepOutcome(request=[sql], changed=job.ddl_operation_performed != "SKIP", result=_job_result(job))

    def create_table(self, table: TableSpec) -> StepOutcome:
        live = self._get_table(table.name)
        if live is not None:
            present = {f.name for f in live.schema}
            missing = [c for c in table.columns if c.name not in present]
            if missing:
                return self.add_columns(table.name, missing)
            return StepOutcome(request=[], changed=False, result={"exists": True})
        sql = create_table_sql(self.project, self.dataset, table)
        job = self._run(sql, action=f"creating table {self._table_id(table.name)}")
        return StepOutcome(request=[sql], changed=job.ddl_operation_performed != "SKIP", result=_job_result(job))

    def add_columns(self, table: str, columns: Sequence[Column]) -> StepOutcome:
        present = {f.name for f in self._existing_table(table).schema}
        missing = [c for c in columns if c.name not in present]
        if not missing:
            return StepOutcome(request=[], changed=False, result={"exists": [c.name for c in columns]})
        sql = add_columns_sql(self.project, self.dataset, table, missing)
        job = self._run(sql, action=f"adding columns to {self._table_id(table)}")
        return StepOutcome(request=[sql], changed=True, result={"added": [c.name for c in missing], **_job_result(job)})

    def widen_columns(self, table: str, columns: Sequence[tuple[str, str]]) -> StepOutcome:
        live = {f.name: _type(f) for f in self._existing_table(table).schema}
        statements = [
            widen_column_sql(self.project, self.dataset, table, name, new_type)
            for name, new_type in columns
            if name in live and live[name] != new_type
        ]
        for sql in statements:
            self._run(sql, action=f"changing a column type of {self._table_id(table)}")
        return StepOutcome(request=statements, changed=bool(statements))

    def set_table_metadata(self, table: TableSpec) -> StepOutcome:
        live = self._existing_table(table.name)
        statements = []
        wanted_labels = {k: label_value(v) for k, v in table.labels}
        if (
            (live.description or "") != table.description
            or dict(live.labels or {}) != wanted_labels
            or bool(live.require_partition_filter) != table.require_partition_filter
        ):
            statements.append(set_table_options_sql(self.project, self.dataset, table))
        described = {f.name: f.description or "" for f in live.schema}
        for column in table.columns:
            if column.name in described and described[column.name] != column.description:
                statements.append(
                    set_column_description_sql(self.project, self.dataset, table.name, column.name, column.description)
                )
        for sql in statements:
            self._run(sql, action=f"setting the options of {self._table_id(table.name)}")
        return StepOutcome(request=statements, changed=bool(statements))

    def replace_view(self, name: str, sql: str) -> StepOutcome:
        live = self._get_table(name)
        if live is not None and live.table_type == "VIEW" and _same_query(live.view_query or "", _view_body(sql)):
            return StepOutcome(request=[], changed=False, result={"exists": True})
        job = self._run(sql, action=f"replacing view {self._table_id(name)}")
        return StepOutcome(request=[sql], changed=True, result=_job_result(job))

    def dry_run(self, sql: str) -> dict[str, Any]:
        config = bigquery.QueryJobConfig(dry_run=True, use_query_cache=False)
        with self._translated("dry-running a statement", JOB_USER):
            job = self.client.query(sql, job_config=config, retry=self.retry, timeout=self.timeout, job_retry=None)
        return {
            "valid": True,
            "total_bytes_processed": int(job.total_bytes_processed or 0),
            "statement_type": job.statement_type,
        }

    def preflight(self, statements: Sequence[str]) -> dict[str, Any]:
        """Dry-runs each statement, except those on a dataset or table an earlier statement of the same run
        creates or alters: BigQuery cannot dry-run them before that is applied (they are checked when their step
        runs)."""
        problems: list[str] = []
        created: list[str] = []
        skipped = 0
        for sql in statements:
            if any(name in sql for name in created):
                skipped += 1
            else:
                try:
                    self.dry_run(sql)
                except TransientStoreError:
                    raise  # retried by the runner, not reported as a problem of the plan
                except Exception as error:  # noqa: BLE001 - reported to the person, who acts on it
                    problems.append(f"{sql.splitlines()[0][:120]}: {error}")
            if match := CREATES.match(sql):
                created.append(f"`{match.group(1)}`" if match.group(1).count(".") == 2 else f"`{match.group(1)}.")
        return {"problems": problems, "checked": len(statements) - skipped, "checked_when_applied": skipped}

    def _list(self) -> list[Any]:
        with self._translated(f"listing dataset {self.project}.{self.dataset}", DATA_EDITOR):
            try:
                return list(
                    self.client.list_tables(f"{self.project}.{self.dataset}", retry=self.retry, timeout=self.timeout)
                )
            except google_exceptions.NotFound:
                return []

    def describe(self) -> dict[str, LiveTable]:
        live = {}
        for item in self._list():
            if item.table_type != "TABLE":
                continue
            table = self._get_table(item.table_id)
            if table is not None:  # dropped between the listing and the read
                live[item.table_id] = _live_table(table)
        return live

    def views(self) -> list[str]:
        return sorted(item.table_id for item in self._list() if item.table_type == "VIEW")

    def replace_partitions(
        self, table: str, dates: Sequence[dt.date], files: Sequence[str], columns: Mapping[str, str]
    ) -> dict[dt.date, int]:
        """Replaces the rows of these partitions with the files' rows of the same dates, in one transaction.

        The files are loaded into a staging table of the dataset; one multi-statement transaction then keeps
        the retained columns (those of the table the source does not fill) of the affected partitions, deletes
        the partitions and inserts the staged rows of those dates joined with the kept values. Returns the source
        rows per date that were written, counted in the staging table.
        """
        day_list = sorted(set(dates))
        if not day_list:
            return {}
        names = [_ident(source) for source in columns]
        loaded = {_ident(columns[source]) for source in names}
        live = self._existing_table(table)
        retained = [f.name for f in live.schema if f.name not in loaded and f.name not in KEY_COLUMNS]
        target = f"`{self._table_id(_ident(table))}`"
        stage_name = f"_fcc_stage_{uuid.uuid4().hex}"
        stage = f"`{self._table_id(stage_name)}`"
        parameters = [bigquery.ArrayQueryParameter("dates", "DATE", day_list)]
        try:
            self._load_stage(stage_name, files, names)
            counted = self._parameterized(
                f"SELECT DATE(ts_minute) AS day, COUNT(*) AS n FROM {stage} "  # noqa: S608
                f"WHERE {IN_DATES.format(column='ts_minute')} GROUP BY day",
                parameters,
                action=f"counting the staged rows for {self._table_id(table)}",
            )
            counts = {row[0]: int(row[1]) for row in counted}
            insert = ", ".join(f"`{c}`" for c in [*(columns[s] for s in names), *retained])
            select = ", ".join([*(f"s.`{s}`" for s in names), *(f"o.`{c}`" for c in retained)])
            statements = ["BEGIN TRANSACTION"]
            kept_join = ""
            if retained:
                kept = ", ".join(f"`{c}`" for c in [*KEY_COLUMNS, *retained])
                statements.append(
                    f"CREATE TEMP TABLE fcc_kept AS SELECT {kept} FROM {target} "  # noqa: S608
                    f"WHERE {IN_DATES.format(column='ts_minute')}"
                )
                keys = ", ".join(f"`{k}`" for k in KEY_COLUMNS)
                kept_join = f"LEFT JOIN fcc_kept AS o USING ({keys}) "
            statements += [
                f"DELETE FROM {target} WHERE {IN_DATES.format(column='ts_minute')}",  # noqa: S608
                f"INSERT INTO {target} ({insert}) SELECT {select} FROM {stage} AS s "  # noqa: S608
                f"{kept_join}WHERE {IN_DATES.format(column='s.ts_minute')}",
                "COMMIT TRANSACTION",
            ]
            # A failing statement ends the script; BigQuery rolls back a transaction the script leaves open.
            self._parameterized(
                ";\n".join(statements) + ";", parameters, action=f"replacing partitions of {self._table_id(table)}"
            )
        finally:
            with self._translated(f"dropping the staging table {stage_name}", DATA_EDITOR):
                self.client.delete_table(
                    self._table_id(stage_name), not_found_ok=True, retry=self.retry, timeout=self.timeout
                )
        return {day: counts.get(day, 0) for day in day_list}

    def partition_row_counts(self, table: str, dates: Sequence[dt.date]) -> dict[dt.date, int]:
        day_list = sorted(set(dates))
        if not day_list:
            return {}
        rows = self._parameterized(
            f"SELECT DATE(ts_minute) AS day, COUNT(*) AS n FROM `{self._table_id(_ident(table))}` "  # noqa: S608
            f"WHERE {IN_DATES.format(column='ts_minute')} GROUP BY day",
            [bigquery.ArrayQueryParameter("dates", "DATE", day_list)],
            action=f"counting the rows of {self._table_id(table)}",
        )
        counts = {row[0]: int(row[1]) for row in rows}
        return {day: counts.get(day, 0) for day in dates}

    def _parameterized(self, sql: str, parameters: list[Any], *, action: str) -> list[tuple[Any, ...]]:
        config = bigquery.QueryJobConfig(query_parameters=parameters)
        with self._translated(action, DATA_EDITOR):
            job = self.client.query(sql, job_config=config, retry=self.retry, timeout=self.timeout, job_retry=None)
            rows = job.result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
            return [tuple(row.values()) for row in rows]

    def _load_stage(self, stage: str, files: Sequence[str], names: Sequence[str]) -> None:
        """Loads the files' source columns into the staging table: gs:// URIs in one load job from Cloud Storage;
        local files merged into one Parquet file first, so that a chunk of hourly files is one load job."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        table_id = self._table_id(stage)
        config = bigquery.LoadJobConfig(
            source_format=bigquery.SourceFormat.PARQUET, write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE
        )
        action = f"loading the source files into {table_id}"
        if not files:
            raise PermanentStoreError("no source files to load", action=action)
        remote = [f for f in files if f.startswith("gs://")]
        if remote:
            if len(remote) != len(files):
                raise PermanentStoreError("the source files mix gs:// URIs and local paths", action=action)
            with self._translated(action, DATA_EDITOR):
                job = self.client.load_table_from_uri(
                    list(remote), table_id, job_config=config, retry=self.retry, timeout=self.timeout
                )
                job.result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
            return
        schema = pa.unify_schemas([pq.read_schema(path) for path in files], promote_options="permissive")
        schema = pa.schema([schema.field(name) for name in names])
        handle, merged = tempfile.mkstemp(suffix=".parquet", prefix="fcc-stage-")
        os.close(handle)
        try:
            # Microseconds: BigQuery's TIMESTAMP precision.
            with pq.ParquetWriter(merged, schema, coerce_timestamps="us", allow_truncated_timestamps=True) as writer:
                for path in files:
                    for batch in pq.ParquetFile(path).iter_batches(columns=list(names)):
                        writer.write_table(pa.Table.from_batches([batch]).select(list(names)).cast(schema))
            with self._translated(action, DATA_EDITOR), open(merged, "rb") as source:
                job = self.client.load_table_from_file(
                    source, table_id, job_config=config, rewind=True, timeout=self.timeout
                )
                job.result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
        finally:
            os.unlink(merged)

    def point_in_time(self, entities: Any, features: Sequence[Any]) -> Any:
        """The same semantics as SQL (`retrieval.training_sql`): the entity rows' keys are loaded (as Parquet, so
        their types hold: a pandas frame would turn an integer column with nulls into FLOAT64) into a table of
        their own in the dataset, joined as of their event times, and the table is dropped. The result is the
        entity rows as given, with the features' columns from the query."""
        from provisioning.retrieval import with_feature_columns

        with (
            self._training_query(entities, features) as rows,
            self._translated("reading the training dataset query's result", JOB_USER),
        ):
            computed = rows.to_arrow()
        return with_feature_columns(entities, computed, features)

    def point_in_time_batches(self, entities: Any, features: Sequence[Any], rows_per_batch: int) -> Iterator[Any]:
        """One query for every batch; its result is read a page at a time and cut into batches of entity rows."""
        from provisioning.retrieval import RetrievalError, rebatched, with_feature_columns

        # Pages of a batch's rows (BigQuery may cut them smaller, by bytes): a batch is a few pages at most.
        with self._training_query(entities, features, page_size=max(1, rows_per_batch)) as rows:
            start = 0
            for computed in rebatched(self._pages(rows), rows_per_batch):
                batch = entities.slice(start, computed.num_rows)
                yield with_feature_columns(batch, computed, features, first_row=start)
                start += computed.num_rows
        if start != entities.num_rows:
            raise RetrievalError(f"the query returned {start} rows for {entities.num_rows} entity rows")

    def _pages(self, rows: Any) -> Iterator[Any]:
        """The result's pages (Arrow record batches), each fetched with BigQuery's errors translated."""
        pages = iter(rows.to_arrow_iterable())
        while True:
            with self._translated("reading the training dataset query's result", JOB_USER):
                page = next(pages, None)
            if page is None:
                return
            yield page

    @contextmanager
    def _training_query(self, entities: Any, features: Sequence[Any], page_size: int | None = None) -> Iterator[Any]:
        """The training query's finished job over the entity rows' keys, loaded into a table of their own that is
        dropped afterwards; yields the job's result rows (a RowIterator)."""
        import pyarrow.parquet as pq

        from provisioning.retrieval import entity_keys, event_window, training_sql

        window = event_window(entities, features)
        if window is None:
            raise PermanentStoreError("the entity rows have no usable event_timestamp")
        keys = entity_keys(entities, features)
        table_id = self._table_id(f"_fcc_entities_{uuid.uuid4().hex}")
        handle, staged = tempfile.mkstemp(suffix=".parquet", prefix="fcc-entities-")
        os.close(handle)
        try:
            pq.write_table(keys, staged)
            config = bigquery.LoadJobConfig(
                source_format=bigquery.SourceFormat.PARQUET,
                write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
            )
            with self._translated("loading the entity rows", DATA_EDITOR), open(staged, "rb") as source:
                self.client.load_table_from_file(
                    source, table_id, job_config=config, rewind=True, timeout=self.timeout
                ).result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
        finally:
            os.unlink(staged)
        try:
            sql = training_sql(
                project=self.project,
                dataset=self.dataset,
                entity_table=table_id.rsplit(".", 1)[-1],
                features=features,
                event_range=window,
            )
            with self._translated("running the training dataset query", JOB_USER):
                job = self.client.query(sql, retry=self.retry, timeout=self.timeout, job_retry=None)
                rows = job.result(page_size=page_size, retry=self.retry, timeout=self.settings.job_timeout_seconds)
            # Outside the translation: what the caller raises while reading is not BigQuery's.
            yield rows
        finally:
            with self._translated("dropping the entity rows' table", DATA_EDITOR):
                self.client.delete_table(table_id, not_found_ok=True, retry=self.retry, timeout=self.timeout)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self._translated("running a query", JOB_USER):
            job = self.client.query(sql, retry=self.retry, timeout=self.timeout, job_retry=None)
            rows = job.result(retry=self.retry, timeout=self.settings.job_timeout_seconds)
            return [tuple(row.values()) for row in rows]


def _ident(name: str) -> str:
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a valid identifier")
    return name


def _message(error: BaseException) -> str:
    """The service's own words, without the client's method and URL prefix."""
    if isinstance(error, google_exceptions.RetryError):
        cause = error.cause
        return f"gave up retrying: {_message(cause) if cause is not None else error.message}"
    if isinstance(error, google_exceptions.GoogleAPICallError):
        details = [e.get("message") for e in (error.errors or []) if isinstance(e, dict) and e.get("message")]
        return f"{error.code} {details[0]}" if details else str(error)
    return f"{type(error).__name__}: {error}"


def _role_for(error: google_exceptions.Forbidden, default: str) -> str:
    """The role that grants what the service said was missing; the call's own role when it did not say."""
    text = str(error)
    if "bigquery.jobs." in text:
        return JOB_USER
    if any(f"bigquery.{kind}." in text for kind in ("datasets", "tables", "routines")):
        return DATA_EDITOR
    return default


def _job_result(job: bigquery.QueryJob) -> dict[str, Any]:
    result: dict[str, Any] = {"job_id": job.job_id}
    if job.ddl_operation_performed:
        result["ddl_operation"] = job.ddl_operation_performed
    return result


def _type(field: bigquery.SchemaField) -> str:
    name = str(field.field_type).upper()
    return LEGACY_TYPES.get(name, name)


def _live_table(table: bigquery.Table) -> LiveTable:
    partition: str | None = None
    if table.time_partitioning is not None:
        # Ingestion-time partitioning has no column: BigQuery's pseudo-column stands for it.
        partition = table.time_partitioning.field or "_PARTITIONTIME"
    elif table.range_partitioning is not None:
        partition = table.range_partitioning.field
    return LiveTable(
        name=table.table_id,
        columns=tuple(
            LiveColumn(f.name, _type(f), required=f.mode == "REQUIRED", description=f.description or "")
            for f in table.schema
        ),
        partition_column=partition,
        cluster_by=tuple(table.clustering_fields or ()),
        require_partition_filter=bool(table.require_partition_filter),
        labels=dict(table.labels or {}),
        description=table.description or "",
        num_rows=int(table.num_rows or 0),
        num_bytes=int(table.num_bytes or 0),
    )


def _view_body(sql: str) -> str:
    """The query of a CREATE [OR REPLACE] VIEW statement."""
    tree = sqlglot.parse_one(sql, read="bigquery")
    if not isinstance(tree, exp.Create) or tree.expression is None:
        raise PermanentStoreError(f"not a CREATE VIEW statement: {sql[:120]!r}")
    return str(tree.expression.sql(dialect="bigquery"))


def _same_query(left: str, right: str) -> bool:
    """Whether two queries are the same once formatting is set aside (BigQuery keeps a view's text as sent)."""
    try:
        return bool(
            sqlglot.parse_one(left, read="bigquery").sql(dialect="bigquery")
            == sqlglot.parse_one(right, read="bigquery").sql(dialect="bigquery")
        )
    except sqlglot.errors.ParseError:
        return False
