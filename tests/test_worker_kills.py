"""SIGKILL, again and again: a real Celery worker is killed at random points of a provisioning run and of
backfills, a new worker is started each time (its beat's reaper frees the stale work), and everything converges
exactly once: every step, table, column, partition and row; the audit log shows every claim and reaping.

For a soak run: FCC_SOAK_KILLS (default 10), FCC_SOAK_SEED (default: random, printed), FCC_SOAK_MAX_DELAY (the
longest extra wait before a kill, default 0.5 s), FCC_SOAK_DAYS (trading days of Parquet, default 2).
"""

import contextlib
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from django.conf import settings
from django.db import connection

from catalog.audit import audit_chain_verify
from catalog.models import AuditLogEntry, Environment
from catalog.services import catalog_load
from provisioning.backends import offline_store_for
from provisioning.backfill import backfill_create
from provisioning.drift import drift_findings
from provisioning.models import Backfill, BackfillPartition, ProvisioningRun, ProvisioningStep
from provisioning.offline.duckdb_store import DuckDBOfflineStore
from provisioning.sample_data import components_from_spec_dir, generate_sample_data
from tests.faults import soak_record
from tests.test_worker_e2e import ROOT, _database_url, _wait_for

pytestmark = [
    pytest.mark.worker,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql" or not settings.CELERY_BROKER_URL.startswith("redis://"),
        reason="needs PostgreSQL and Redis (the production configuration): workers killed while holding row claims",
    ),
]

KILLS = int(os.environ.get("FCC_SOAK_KILLS", "10"))
MAX_DELAY = float(os.environ.get("FCC_SOAK_MAX_DELAY", "0.5"))
DAYS = int(os.environ.get("FCC_SOAK_DAYS", "2"))
COMPONENTS = [f"c{i}" for i in range(1, 9)]


class Workers:
    """One worker (with its beat, so the reaper runs) at a time; killed with SIGKILL and replaced."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None
        self.started_at = 0.0

    def start(self) -> None:
        command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "provisioning", "--pool", "solo"]
        command += ["--loglevel", "INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
        command += ["--beat", "--schedule", str(self.log_path.with_suffix(".beat"))]
        self._log = self.log_path.open("a")
        self.started_at = time.monotonic()
        # A session of its own: the embedded beat is a child process, and a SIGKILL of the worker alone would
        # leave it running (sending reaper ticks) after the worker, the test and the CI run are gone.
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)  # the worker and its beat, as when their machine dies
        self.process.wait(timeout=20)
        self._log.close()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):  # a beat child that outlived its worker
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        self.process = None


def _claimed_by(model: Any, pk: int, pid: int) -> bool:
    return bool(model.objects.filter(pk=pk, claimed_by__endswith=f":{pid}").exists())


def _run_progress(run: ProvisioningRun) -> tuple[bool, int, str]:
    state = ProvisioningRun.objects.get(pk=run.pk).state
    done = ProvisioningStep.objects.filter(run=run, status="succeeded").count()
    running = list(ProvisioningStep.objects.filter(run=run, status="running").values_list("index", flat=True))
    return state in ("succeeded", "failed"), done, f"run {state}, {done} steps done, running {running}"


def _backfill_progress(backfill: Backfill) -> tuple[bool, int, str]:
    row = Backfill.objects.get(pk=backfill.pk)
    done = BackfillPartition.objects.filter(backfill=backfill, status="done").count()
    return row.state in ("succeeded", "failed", "cancelled"), done, f"backfill {row.state}, {done} partitions done"


def _kill_cycle(
    workers: Workers, rng: random.Random, model: Any, target: Any, progress: Any, units: int, log: Path
) -> str | None:
    """Waits for the current worker to claim the target, then for a random number (0-3) of further steps or
    partitions and a random delay, and kills it there. Returns what was in progress at the kill, or None when
    the target finished first (no kill, or a kill that landed after it finished)."""
    pid = workers.pid
    try:
        _wait_for(lambda: _claimed_by(model, target.pk, pid), timeout=60, what=f"worker {pid} to claim", log=log)
    except AssertionError as error:
        # What the row says now (another consumer may hold it), not the test's stale copy.
        row = model.objects.filter(pk=target.pk).values("state", "claimed_by", "heartbeat_at").first()
        raise AssertionError(f"{error}\n{model.__name__} {target.pk} now: {row}") from None
    claimed_after = time.monotonic() - workers.started_at
    _, done, _ = progress(target)
    wanted = min(done + rng.randint(0, 3), units - 1)
    _wait_for(lambda: progress(target)[0] or progress(target)[1] >= wanted, timeout=60, what="progress", log=log)
    delay = rng.uniform(0.0, MAX_DELAY)
    time.sleep(delay)
    finished, _, where = progress(target)
    if finished:
        return None
    workers.kill()
    # The target may have finished between the look above and the kill landing: then nothing of it was cut off
    # (no reaping will follow) and the kill does not count.
    finished = progress(target)[0]
    workers.start()
    if finished:
        return None
    return f"claimed {claimed_after:.1f}s after start; {wanted - done} more done, then {delay:.2f}s: {where}"


def _source_counts(root: Path) -> dict[tuple[str, dt.date], int]:
    """Rows per (component, UTC date of ts_minute) in the Parquet files, read independently of the backfill."""
    counts: Counter[tuple[str, dt.date]] = Counter()
    for path in root.glob("*/*/*/*/*/*.parquet"):
        stamps = pq.read_table(path, columns=["ts_minute"]).column("ts_minute").to_pylist()
        for stamp in stamps:
            counts[(path.stem, stamp.astimezone(dt.UTC).date())] += 1
    return dict(counts)


def test_ten_sigkills_during_a_run_and_backfills_converge_exactly_once(isolated_stores, tmp_path, reference):
    seed = int(os.environ.get("FCC_SOAK_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    print(f"SIGKILL soak: FCC_SOAK_SEED={seed} FCC_SOAK_KILLS={KILLS} FCC_SOAK_MAX_DELAY={MAX_DELAY}")  # noqa: T201
    parquet = tmp_path / "parquet"
    start = dt.date(2025, 8, 4)
    generate_sample_data(
        parquet, components=components_from_spec_dir(), start=start, days=DAYS, symbols=["NIFTY"], expiries=1
    )
    source = _source_counts(parquet)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "FCC_STORES": json.dumps(isolated_stores),
        "DATA_DIR": str(settings.DATA_DIR),
        "FCC_PARQUET_ROOT": str(parquet),
        "FCC_RUN_STALE_SECONDS": "1",
        "FCC_REAPER_SECONDS": "1",
        "FCC_STEP_BACKOFF_SECONDS": "0.05",
        "FCC_BACKFILL_PARTITIONS_PER_JOB": "1",
        "FCC_ONLINE_SYNC_SECONDS": "3600",
        "FCC_DRIFT_SECONDS": "3600",
    }
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "purge", "-f", "-Q", "provisioning"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    log = tmp_path / "workers.log"
    workers = Workers(env, log)
    workers.start()
    kills: list[str] = []
    run_kills: dict[int, int] = {}
    backfill_kills: dict[int, int] = {}
    try:
        # Half the kills go to bootstrap runs. A run is quick (its steps take milliseconds on the embedded
        # stores), so one can end before the first kill lands: the next environment's run is the target then.
        for name in ["dev", "staging", "prod"]:
            catalog_load(specs_dir=Path(settings.FCC_SPECS_DIR), environment_names=[name])
            run = ProvisioningRun.objects.get(environment__name=name, revision=1)
            run_kills[run.pk] = 0
            while sum(run_kills.values()) < KILLS // 2:
                units = len(run.plan["steps"]) + 1
                where = _kill_cycle(workers, rng, ProvisioningRun, run, _run_progress, units, log)
                if where is None:
                    break
                run_kills[run.pk] += 1
                kills.append(f"kill {len(kills) + 1} (run {run.pk}, {name}) {where}")
            _wait_for(lambda r=run: _run_progress(r)[0], what=f"{run} to finish", log=log)
            if sum(run_kills.values()):
                break
        dev = Environment.objects.get(name="dev")
        # The kills left go to backfills of every component; when one finishes before they are spent, another
        # replaces the same partitions (a rerun must leave identical counts).
        backfills: list[Backfill] = []
        while len(kills) < KILLS:
            backfill = backfill_create(
                user=None,
                environment=dev,
                source=str(parquet),
                start_date=None,
                end_date=None,
                components=COMPONENTS,
                reason=f"soak {len(backfills) + 1}",
            )
            backfills.append(backfill)
            backfill_kills[backfill.pk] = 0
            while len(kills) < KILLS:
                where = _kill_cycle(workers, rng, Backfill, backfill, _backfill_progress, len(source), log)
                if where is None:
                    break
                backfill_kills[backfill.pk] += 1
                kills.append(f"kill {len(kills) + 1} (backfill {backfill.pk}) {where}")
        for backfill in backfills:
            _wait_for(lambda b=backfill: _backfill_progress(b)[0], what=f"{backfill} to finish", log=log)
    finally:
        workers.stop()
    print("\n".join(kills))  # noqa: T201
    context = f"FCC_SOAK_SEED={seed}; " + "; ".join(kills)

    assert len(kills) == KILLS, context
    assert sum(run_kills.values()) >= 1, context
    assert sum(1 for n in backfill_kills.values() if n) >= 1, context

    # The runs: applied, every step recorded once and succeeded; one claim per attempt, one reaping per kill.
    for run in ProvisioningRun.objects.filter(pk__in=run_kills):
        assert run.state == "succeeded", (run.error, context)
        steps = list(ProvisioningStep.objects.filter(run=run).order_by("index").values_list("index", "status"))
        assert [i for i, _ in steps] == list(range(len(run.plan["steps"]) + 1)), context
        assert {s for _, s in steps} == {"succeeded"}, context
        claims = AuditLogEntry.objects.filter(action="provisioning_run.claim", object_id=str(run.pk))
        reaped = AuditLogEntry.objects.filter(action="provisioning_run.reaped", object_id=str(run.pk))
        assert claims.count() == run.attempts == run_kills[run.pk] + 1, context
        assert reaped.count() == run_kills[run.pk], context
        # Each claim after a kill names a different worker process.
        assert len({entry.after["worker"] for entry in claims}) == run_kills[run.pk] + 1, context

    # The backfills: succeeded, each partition once, reconciled with the files; claims and reapings audited.
    expected_partitions = sorted(source)
    for backfill in backfills:
        backfill.refresh_from_db()
        assert backfill.state == "succeeded", (backfill.error, context)
        partitions = list(
            BackfillPartition.objects.filter(backfill=backfill)
            .order_by("component", "partition_date")
            .values_list("component", "partition_date", "status", "source_rows", "target_rows")
        )
        assert [(c, d) for c, d, *_ in partitions] == expected_partitions, context
        for component, day, status, source_rows, target_rows in partitions:
            assert status == "done", context
            assert source_rows == target_rows == source[(component, day)], (component, day, context)
        assert backfill.partitions_total == backfill.partitions_done == len(expected_partitions), context
        assert backfill.rows_loaded == sum(source.values()), context
        kills_here = backfill_kills[backfill.pk]
        assert AuditLogEntry.objects.filter(action="backfill.reaped", object_id=str(backfill.pk)).count() == kills_here
        assert AuditLogEntry.objects.filter(action="backfill.claim", object_id=str(backfill.pk)).count() == (
            kills_here + 1
        ), context
        assert AuditLogEntry.objects.filter(action="backfill.succeeded", object_id=str(backfill.pk)).count() == 1

    # The offline store: every table once, its columns those of the catalog (no drift), each partition's rows
    # those of the source files, and no key twice.
    assert drift_findings(dev) == [], context
    store = offline_store_for(dev)
    assert isinstance(store, DuckDBOfflineStore)
    live = store.describe()
    assert sorted(live) == [f"{c}_features" for c in COMPONENTS]
    with store.connect(read_only=True) as duck:
        for component in COMPONENTS:
            table = f"market_regime_dev.{component}_features"
            assert len({c.name for c in live[f"{component}_features"].columns}) == len(
                live[f"{component}_features"].columns
            )
            per_day = dict(duck.execute(f"SELECT CAST(ts_minute AS DATE), count(*) FROM {table} GROUP BY 1").fetchall())  # noqa: S608
            assert per_day == {d: n for (c, d), n in source.items() if c == component}, (component, context)
            counted = duck.execute(
                f"SELECT count(*), count(DISTINCT (symbol, ts_minute, dte)) FROM {table}"  # noqa: S608
            ).fetchone()
            assert counted is not None
            assert counted[0] == counted[1], (component, context)  # no key twice

    checked, problems = audit_chain_verify()
    assert problems == [], problems
    assert checked > 0
    soak_record(
        "worker-sigkill",
        seed=seed,
        kills=len(kills),
        run_kills=sum(run_kills.values()),
        backfill_kills=sum(backfill_kills.values()),
        backfills=len(backfills),
        partitions=len(expected_partitions) * len(backfills),
        rows_per_backfill=sum(source.values()),
        audit_entries_verified=checked,
    )
