"""Backfills: Parquet history into the offline tables, checked first, written partition by partition.

Before anything is written every file is checked against the catalog (missing, unknown and mistyped columns,
all listed at once). Partitions are replaced in jobs of at most FCC_BACKFILL_PARTITIONS_PER_JOB (BigQuery lets
one job modify 4,000); a job is one transaction, so a rerun replaces and never duplicates, and a cancel (checked
between jobs) never leaves a partition half written. After each job the row counts of source and target are
reconciled per partition.
"""

import datetime as dt
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from catalog import roles
from catalog.audit import audit_log_write, audit_refusal
from catalog.errors import ApplicationError, Conflict, NotFound, PermissionDenied, Problem
from catalog.models import Component, Environment, Feature
from provisioning.backends import offline_store_for
from provisioning.ddl import KEY_COLUMNS
from provisioning.dispatch import task_send_on_commit
from provisioning.errors import StoreError
from provisioning.heartbeat import heartbeat
from provisioning.models import Backfill, BackfillPartition
from provisioning.offline.base import OfflineStore
from provisioning.parquet_source import (
    GCS_PREFIX,
    ExpectedColumn,
    SourceFile,
    read_schema,
    schema_problems,
    source_files,
)
from provisioning.retries import store_call_with_retries

logger = logging.getLogger(__name__)
BIGQUERY_PARTITIONS_PER_JOB = 4000
MAX_DAYS = 10_000


class BackfillSourceError(ApplicationError):
    status = 400
    code = "invalid_source"


def expected_columns(environment: Environment, components: list[str]) -> dict[str, dict[str, ExpectedColumn]]:
    """Per component: source column -> what the catalog expects of it (key columns, then every feature)."""
    expected: dict[str, dict[str, ExpectedColumn]] = {
        key: {name: ExpectedColumn(type_, True, name) for name, type_, _ in KEY_COLUMNS} for key in components
    }
    from catalog.rules import DTYPES

    rows = Feature.objects.filter(environment=environment, component__key__in=components).values_list(
        "component__key", "name", "dtype", "status", "column_name"
    )
    for component, name, dtype, status, column in rows:
        expected[component][name] = ExpectedColumn(DTYPES[dtype].bigquery, status == Feature.Status.ACTIVE, column)
    return expected


def _check_source(
    backfill_env: Environment, source: str, components: list[str], start: dt.date | None, end: dt.date | None
) -> tuple[list[SourceFile], dict[str, frozenset[str]]]:
    """The source's files, checked against the catalog, and each file's column names."""
    try:
        # gs:// sources: the BigQuery backend's load jobs read Cloud Storage; the DuckDB store reads local paths.
        gcs = offline_store_for(backfill_env).kind == "bigquery"
        files = source_files(source, set(components), start, end, gcs=gcs)
    except (ValueError, FileNotFoundError) as error:
        raise BackfillSourceError(str(error), problems=[Problem("source", "unreadable_source", str(error))]) from error
    if not files:
        raise BackfillSourceError(
            f"no Parquet files for {', '.join(components)} between {start or 'the start'} and {end or 'the end'} "
            f"in {source}",
            problems=[
                Problem("source", "no_files", f"no files match {source}/{{ASSET}}/yyyy/mm/dd/HH/{{component}}.parquet")
            ],
        )
    # Each schema is read once, here. Files with the same schema pass or fail together, so only the first file of
    # each schema is checked: each problem still names the first file where it is seen.
    columns: dict[str, frozenset[str]] = {}
    first_of_schema: dict[tuple[str, Any], tuple[SourceFile, frozenset[str]]] = {}
    for file, schema in zip(files, _schemas([f.path for f in files]), strict=True):
        if isinstance(schema, (ValueError, FileNotFoundError)):
            # The first unreadable file in date order, as a reading one at a time would report it.
            raise BackfillSourceError(
                str(schema), problems=[Problem("source", "unreadable_source", str(schema))]
            ) from schema
        seen = first_of_schema.get((file.component, schema))
        if seen is None:
            seen = first_of_schema[(file.component, schema)] = (file, frozenset(schema.names))
        columns[file.path] = seen[1]
    firsts = [first for first, _ in first_of_schema.values()]
    problems = schema_problems(firsts, expected_columns(backfill_env, components))
    if problems:
        raise BackfillSourceError(
            f"{len(problems)} problem(s) in the source files; nothing was written", problems=problems
        )
    return files, columns


SCHEMA_READ_THREADS = 8


def _schemas(paths: list[str]) -> list[pa.Schema | ValueError | FileNotFoundError]:
    """Each file's schema, or why it cannot be read, in order. Footers are read on a few threads: reading one is
    mostly waiting (on a round trip for gs:// objects), and pyarrow lets go of the GIL meanwhile."""

    def one(path: str) -> pa.Schema | ValueError | FileNotFoundError:
        try:
            return read_schema(path)
        except (ValueError, FileNotFoundError) as error:
            return error

    if len(paths) < 2:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(SCHEMA_READ_THREADS, len(paths)), thread_name_prefix="schema") as pool:
        return list(pool.map(one, paths))


def backfill_source_roots() -> list[Path]:
    """The local directories requested backfills may read: FCC_PARQUET_ROOT and FCC_BACKFILL_SOURCE_ROOTS."""
    roots = [settings.FCC_PARQUET_ROOT, *settings.FCC_BACKFILL_SOURCE_ROOTS]
    return [Path(os.path.realpath(root)) for root in roots if root and not root.startswith(GCS_PREFIX)]


def _source_not_allowed(source: str) -> str | None:
    """Why a requested source may not be read, None when it may. A person names the source, and the worker reads
    whatever Parquet files it finds there into the tables: local sources must lie under a configured root (after
    resolving `..` and symbolic links), so a request cannot load files from elsewhere on the worker's machine.
    gs:// sources are read with the service account's own Cloud Storage permissions."""
    if source.startswith(GCS_PREFIX):
        return None
    if "\x00" in source:
        return "a path cannot contain NUL"
    resolved = Path(os.path.realpath(source))
    roots = backfill_source_roots()
    if any(resolved == root or root in resolved.parents for root in roots):
        return None
    shown = ", ".join(str(root) for root in roots) or "none configured"
    return f"{source[:200]!r} is not under an allowed root ({shown}); set FCC_BACKFILL_SOURCE_ROOTS to add one"


def backfill_request(
    *,
    user: Any,
    environment_name: str,
    source: str,
    start_date: dt.date | None,
    end_date: dt.date | None,
    components: list[str] | None = None,
    reason: str = "requested",
) -> Backfill:
    environment = Environment.objects.filter(name=environment_name).first()
    if environment is None:
        raise NotFound(f"environment {environment_name!r} does not exist")
    applied = sorted(
        set(Feature.objects.filter(environment=environment).values_list("component__key", flat=True).distinct())
    )
    components = sorted(set(components or applied))
    unknown = [c for c in components if c not in applied]
    if unknown:
        raise BackfillSourceError(
            f"components {unknown} have no features in {environment.name}",
            problems=[
                Problem("components", "unknown_component", f"{c} has no table in {environment.name}") for c in unknown
            ],
        )
    allowed = roles.is_admin(user) or roles.is_reviewer(user)
    if not allowed:
        owners = roles.owning_teams(environment.pk, components)
        allowed = set(owners.values()) <= roles.team_slugs(user)
    if not allowed:
        reason_text = "only admins, reviewers and members of the owning teams may start backfills"
        audit_refusal(
            actor=user,
            action="backfill.request",
            object_type="environment",
            object_id=environment.name,
            reason=reason_text,
        )
        raise PermissionDenied(reason_text)
    source_problem = _source_not_allowed(source)
    if source_problem is not None:
        raise BackfillSourceError(
            "the source is outside the allowed backfill roots",
            problems=[Problem("source", "source_root", source_problem)],
        )
    if start_date and end_date and (end_date < start_date or (end_date - start_date).days > MAX_DAYS):
        raise BackfillSourceError(
            "the date range is empty or too long",
            problems=[
                Problem("end_date", "date_range", f"end_date must be on or after start_date and within {MAX_DAYS} days")
            ],
        )
    return backfill_create(
        user=user,
        environment=environment,
        source=source,
        start_date=start_date,
        end_date=end_date,
        components=components,
        reason=reason,
    )


def backfill_create(
    *,
    user: Any,
    environment: Environment,
    source: str,
    start_date: dt.date | None,
    end_date: dt.date | None,
    components: list[str],
    reason: str,
) -> Backfill:
    """Checks the source against the catalog and records the backfill; callers have checked permissions
    (`backfill_request`), or act as the system (`load_demo_data`, breaking changes). A component named twice
    is recorded once."""
    components = sorted(set(components))
    _check_source(environment, source, components, start_date, end_date)
    with transaction.atomic():
        backfill = Backfill.objects.create(
            environment=environment,
            components=components,
            source=source,
            start_date=start_date,
            end_date=end_date,
            reason=reason,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
        )
        audit_log_write(
            actor=user,
            action="backfill.request",
            object_type="backfill",
            object_id=backfill.pk,
            environment=environment.name,
            after={
                "components": components,
                "source": source,
                "start_date": str(start_date),
                "end_date": str(end_date),
            },
        )
        backfill_enqueue(backfill)
    return backfill


def backfill_enqueue(backfill: Backfill) -> None:
    from workers.tasks import backfill_execute_task

    task_send_on_commit(backfill_execute_task, backfill.pk, job="backfill")


def backfill_may_cancel(user: Any, backfill: Backfill) -> bool:
    return roles.is_admin(user) or roles.is_reviewer(user) or backfill.requested_by_id == user.pk


def backfill_cancel(*, user: Any, backfill_id: int) -> Backfill:
    """Requests a stop (admins, reviewers and the requester); a pending backfill is cancelled at once."""
    backfill = Backfill.objects.select_related("environment").filter(pk=backfill_id).first()
    if backfill is None:
        raise NotFound(f"backfill {backfill_id} does not exist")
    if not backfill_may_cancel(user, backfill):
        reason = "only the requester, reviewers and admins may cancel a backfill"
        audit_refusal(
            actor=user,
            action="backfill.cancel",
            object_type="backfill",
            object_id=backfill.pk,
            reason=reason,
            environment=backfill.environment.name,
        )
        raise PermissionDenied(reason)
    with transaction.atomic():
        backfill = Backfill.objects.select_for_update().select_related("environment").get(pk=backfill_id)
        if backfill.state not in (Backfill.State.PENDING, Backfill.State.RUNNING):
            raise Conflict(f"backfill {backfill_id} is {backfill.state}; it cannot be cancelled")
        backfill.cancel_requested = True
        if backfill.state == Backfill.State.PENDING:
            backfill.state = Backfill.State.CANCELLED
            backfill.finished_at = timezone.now()
        backfill.save(update_fields=["cancel_requested", "state", "finished_at"])
        audit_log_write(
            actor=user,
            action="backfill.cancel",
            object_type="backfill",
            object_id=backfill.pk,
            environment=backfill.environment.name,
            after={"state": backfill.state},
        )
    return backfill


def _partitions_per_job() -> int:
    return max(1, min(int(settings.FCC_BACKFILL_PARTITIONS_PER_JOB), BIGQUERY_PARTITIONS_PER_JOB))


def _finish(backfill: Backfill, state: str, error: str = "") -> str:
    with transaction.atomic():
        Backfill.objects.filter(pk=backfill.pk).update(state=state, error=error, finished_at=timezone.now())
        audit_log_write(
            actor=None,
            action=f"backfill.{state}",
            object_type="backfill",
            object_id=backfill.pk,
            environment=backfill.environment.name,
            after={"state": state, **({"error": error} if error else {})},
        )
    return state


def backfill_execute(*, backfill_id: int, worker: str) -> str:
    """Claims and runs a backfill; safe to call again: done partitions are skipped, others replaced."""
    now = timezone.now()
    claimed = Backfill.objects.filter(pk=backfill_id, state=Backfill.State.PENDING, cancel_requested=False).update(
        state=Backfill.State.RUNNING, claimed_by=worker, started_at=now, heartbeat_at=now
    )
    if not claimed:
        return "not-claimed"
    backfill = Backfill.objects.select_related("environment").get(pk=backfill_id)
    environment = backfill.environment
    with transaction.atomic():
        # One entry per claim: a backfill resumed after its worker died shows its reaping and each new claim.
        audit_log_write(
            actor=None,
            action="backfill.claim",
            object_type="backfill",
            object_id=backfill.pk,
            environment=environment.name,
            after={"worker": worker, "partitions_done": backfill.partitions_done},
        )
    with heartbeat(Backfill, backfill.pk, state=Backfill.State.RUNNING, claimed_by=worker):
        return _load_claimed(backfill)


def _load_claimed(backfill: Backfill) -> str:
    """The claimed backfill's checks and partition jobs; its final state."""
    environment = backfill.environment
    try:
        files, columns_by_file = _check_source(
            environment, backfill.source, backfill.components, backfill.start_date, backfill.end_date
        )
    except BackfillSourceError as error:
        details = "; ".join(p.detail for p in error.problems[:20])
        return _finish(backfill, Backfill.State.FAILED, f"{error.message}: {details}")
    by_partition: dict[tuple[str, dt.date], list[SourceFile]] = defaultdict(list)
    for file in files:
        by_partition[(file.component, file.day)].append(file)
    existing = {(p.component, p.partition_date) for p in backfill.partitions.all()}
    BackfillPartition.objects.bulk_create(
        [
            BackfillPartition(backfill=backfill, component=c, partition_date=d, source_bytes=sum(f.size for f in fs))
            for (c, d), fs in sorted(by_partition.items())
            if (c, d) not in existing
        ]
    )
    Backfill.objects.filter(pk=backfill.pk).update(partitions_total=len(by_partition))
    store = offline_store_for(environment)
    expected = expected_columns(environment, backfill.components)
    pending = backfill.partitions.filter(status=BackfillPartition.Status.PENDING).order_by(
        "component", "partition_date"
    )
    jobs: dict[str, list[BackfillPartition]] = defaultdict(list)
    for partition in pending:
        jobs[partition.component].append(partition)
    size = _partitions_per_job()
    with _HeldSession(store, SESSION_HOLD_SECONDS) as held:
        return _load_jobs(backfill, store, held, jobs, size, by_partition, columns_by_file, expected)


def _load_jobs(
    backfill: Backfill,
    store: OfflineStore,
    held: "_HeldSession",
    jobs: dict[str, list[BackfillPartition]],
    size: int,
    by_partition: dict[tuple[str, dt.date], list[SourceFile]],
    columns_by_file: dict[str, frozenset[str]],
    expected: dict[str, dict[str, ExpectedColumn]],
) -> str:
    for component, partitions in jobs.items():
        table = Component.objects.get(key=component).table_name
        for start in range(0, len(partitions), size):
            if Backfill.objects.filter(pk=backfill.pk, cancel_requested=True).exists():
                return _finish(backfill, Backfill.State.CANCELLED)
            chunk = partitions[start : start + size]
            days = [p.partition_date for p in chunk]
            chunk_files = sorted({f.path for p in chunk for f in by_partition[(component, p.partition_date)]})
            present = _columns_present(chunk_files, columns_by_file)
            columns = {name: spec.target for name, spec in expected[component].items() if name in present}

            def job() -> tuple[dict[dt.date, int], dict[dt.date, int]]:
                held.before_job()
                written = store.replace_partitions(table, days, chunk_files, columns)  # noqa: B023 - called at once
                return written, store.partition_row_counts(table, days)  # noqa: B023

            try:
                # A job replaces whole partitions, so a transient failure (the DuckDB file held by a training job
                # for longer than the lock wait, a BigQuery 5xx) is tried again; anything else fails the backfill.
                written, target = store_call_with_retries(job)
            except StoreError as error:
                return _finish(backfill, Backfill.State.FAILED, f"{component} {days[0]}..{days[-1]}: {error}")
            mismatched = []
            for partition in chunk:
                day = partition.partition_date
                partition.source_rows = written[day]
                partition.target_rows = target[day]
                partition.status = (
                    BackfillPartition.Status.DONE if written[day] == target[day] else BackfillPartition.Status.MISMATCH
                )
                partition.finished_at = timezone.now()
                if partition.status == BackfillPartition.Status.MISMATCH:
                    mismatched.append(f"{component} {day}: source {written[day]} rows, table {target[day]}")
            # The partitions and the backfill's totals together: a worker killed between the two would otherwise
            # leave partitions done that the totals never count (the rerun skips done partitions).
            with transaction.atomic():
                BackfillPartition.objects.bulk_update(chunk, ["source_rows", "target_rows", "status", "finished_at"])
                Backfill.objects.filter(pk=backfill.pk).update(
                    partitions_done=F("partitions_done") + len(chunk),
                    rows_loaded=F("rows_loaded") + sum(written.values()),
                    bytes_loaded=F("bytes_loaded") + sum(p.source_bytes for p in chunk),
                    heartbeat_at=timezone.now(),
                )
            if mismatched:
                return _finish(backfill, Backfill.State.FAILED, "row counts differ: " + "; ".join(mismatched[:20]))
    logger.info("backfill succeeded", extra={"backfill": backfill.pk})
    return _finish(backfill, Backfill.State.SUCCEEDED)


# A store session (for DuckDB: the open file) is kept across consecutive jobs for about this long, then given up
# and opened again for the next job.
SESSION_HOLD_SECONDS = 1.0


class _HeldSession:
    """One store session for consecutive jobs, given up once held for `seconds`: small jobs share the cost of
    opening the DuckDB file and of the checkpoint its closing writes (a fixed tens of milliseconds each), and
    other processes, which DuckDB keeps out of a file open for writing, wait at most about `seconds` plus one
    job before they get it."""

    def __init__(self, store: OfflineStore, seconds: float) -> None:
        self.store = store
        self.seconds = seconds
        self._stack: ExitStack | None = None
        self._opened = 0.0

    def __enter__(self) -> "_HeldSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def before_job(self) -> None:
        if self._stack is not None and time.monotonic() - self._opened >= self.seconds:
            self.close()
        if self._stack is None:
            stack = ExitStack()
            stack.enter_context(self.store.session())
            self._stack, self._opened = stack, time.monotonic()

    def close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.close()


def _columns_present(files: list[str], columns_by_file: dict[str, frozenset[str]]) -> set[str]:
    present: set[str] | None = None
    for path in files:
        present = set(columns_by_file[path]) if present is None else present & columns_by_file[path]
    return present or set()


def backfill_progress(backfill: Backfill) -> dict[str, Any]:
    """Partitions, rows, bytes, rate and ETA, as the API and the console show them."""
    elapsed = None
    if backfill.started_at:
        end = backfill.finished_at or timezone.now()
        elapsed = max((end - backfill.started_at).total_seconds(), 1e-6)
    rate = backfill.rows_loaded / elapsed if elapsed else 0.0
    remaining = backfill.partitions_total - backfill.partitions_done
    per_partition = elapsed / backfill.partitions_done if elapsed and backfill.partitions_done else None
    eta = remaining * per_partition if per_partition is not None and backfill.state == Backfill.State.RUNNING else None
    return {
        "partitions_total": backfill.partitions_total,
        "partitions_done": backfill.partitions_done,
        "rows_loaded": backfill.rows_loaded,
        "bytes_loaded": backfill.bytes_loaded,
        "rows_per_second": round(rate, 1),
        "elapsed_seconds": round(elapsed, 3) if elapsed else None,
        "eta_seconds": round(eta, 1) if eta is not None else None,
    }
