"""The broker restarted while provisioning runs are queued, waiting their turn and running: a real Celery worker
process on a Redis of the test's own (append-only file on, as production's broker must be), on PostgreSQL.

No task is lost: the queued messages survive the restart in Redis's append-only file, the worker reconnects,
and a message the worker had received but not acknowledged is delivered again after the visibility timeout.
None is applied twice: a second delivery finds the run already claimed (compare-and-set) and does nothing,
which the audit trail shows (one claim per run, every step attempted once). No beat runs here, so the reaper
(which re-sends queued runs) cannot hide a lost message.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from django.conf import settings
from django.db import connection

from catalog.models import AuditLogEntry, Environment
from catalog.services import catalog_load, change_request_approve, change_request_submit
from provisioning.backends import offline_store_for
from provisioning.models import ProvisioningRun, ProvisioningStep
from tests.faults import log_tail, redis_server, soak_record, wait_for

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
ROOT = Path(settings.BASE_DIR)
ENVIRONMENTS = ["dev", "staging", "prod"]
CHANGES_PER_ENVIRONMENT = 2
VISIBILITY_TIMEOUT = 8


def _database_url() -> str:
    db = connection.settings_dict
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A Redis of this test's own; the tasks the services enqueue go to it (not to the shared broker)."""
    if connection.vendor != "postgresql":
        pytest.skip("the broker restart test runs on PostgreSQL (the SQLite configuration has no Redis)")
    from workers import tasks

    # Celery reads CELERY_BROKER_URL from the environment before the app's own setting: drop it here.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    with redis_server(tmp_path / "redis", appendonly=True) as server:
        producer = Celery("fault-producer", broker=server.url, set_as_current=False)
        producer.conf.broker_connection_retry_on_startup = True
        sent: list[tuple[str, tuple[Any, ...]]] = []

        def send(*args: Any, _name: str, **_: Any) -> None:
            sent.append((_name, args))
            producer.send_task(_name, args=list(args), queue="provisioning")

        for task in (tasks.provisioning_run_execute, tasks.backfill_execute_task, tasks.training_dataset_task):
            monkeypatch.setattr(task, "delay", lambda *a, _name=task.name, **k: send(*a, _name=_name, **k))
        try:
            yield server, sent
        finally:
            producer.close()


def _start_worker(store_paths: dict[str, Any], broker_url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": broker_url,
        "FCC_BROKER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        "FCC_STORES": json.dumps(store_paths),
        "DATA_DIR": str(settings.DATA_DIR),
        "FCC_STEP_BACKOFF_SECONDS": "0.05",
    }
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "provisioning"]
    command += ["--concurrency", "2", "--loglevel", "INFO", "--without-heartbeat", "--without-mingle"]
    command += ["--without-gossip"]
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def _c1_feature_names() -> list[str]:
    from catalog.specs import load_spec_files

    c1 = next(s for s in load_spec_files(Path(settings.FCC_SPECS_DIR)) if s["component"] == "c1")
    return [f["name"] for f in c1["features"]]


def _redescribe(users: dict[str, Any], environment: str, n: int) -> None:
    """An approved metadata-only change (a description): a run of its own, whose steps leave the columns and
    the views alone, so runs approved before the earlier ones ran stay valid (see the report on desired state)."""
    from catalog.specs import load_spec_files

    c1 = next(s for s in load_spec_files(Path(settings.FCC_SPECS_DIR)) if s["component"] == "c1")
    for i in range(n + 1):  # the earlier changes' descriptions stay
        c1["features"][i]["description"] = f"Described again ({i}) while the broker restarts."
    result = change_request_submit(
        user=users["dave"], environment_name=environment, title=f"describe {n}", payload={"specs": [c1]}
    )
    assert result.change_request is not None
    _, missing = change_request_approve(user=users["alice"], change_request_id=result.change_request.pk)
    assert missing == [], missing


def test_broker_restarts_lose_no_task_and_apply_none_twice(broker, isolated_stores, users, tmp_path):
    server, sent = broker
    log_path = tmp_path / "worker.log"
    worker = _start_worker(isolated_stores, server.url, log_path)
    restarts: list[float] = []
    started = time.monotonic()
    try:
        catalog_load(specs_dir=Path(settings.FCC_SPECS_DIR), environment_names=ENVIRONMENTS)
        for environment in ENVIRONMENTS:
            for n in range(CHANGES_PER_ENVIRONMENT):
                _redescribe(users, environment, n)
        runs = list(ProvisioningRun.objects.order_by("pk"))
        assert len(runs) == len(ENVIRONMENTS) * (1 + CHANGES_PER_ENVIRONMENT)
        assert len(sent) == len(runs)

        # First restart: runs running, others queued or waiting (as countdown messages) for their turn.
        wait_for(
            lambda: ProvisioningStep.objects.filter(status="succeeded").count() >= 3,
            60,
            "the first steps",
            lambda: log_tail(log_path),
        )
        queued_in_redis = int(server.command("LLEN", "provisioning"))
        unacked = int(server.command("HLEN", "unacked"))
        restarts.append(server.restart(down_seconds=2.0))
        # Second restart, a crash this time (SIGKILL; the append-only file is written on every command).
        wait_for(
            lambda: ProvisioningRun.objects.filter(state="succeeded").count() >= 2,
            90,
            "two finished runs",
            lambda: log_tail(log_path),
        )
        restarts.append(server.restart(down_seconds=2.0, sig=signal.SIGKILL))
        wait_for(
            lambda: ProvisioningRun.objects.exclude(state="succeeded").count() == 0,
            120,
            "every run to succeed",
            lambda: f"{list(ProvisioningRun.objects.values_list('pk', 'revision', 'state'))}\n{log_tail(log_path)}",
        )
        elapsed = time.monotonic() - started
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()

    # Applied once: one claim per run, every step attempted once, nothing failed or reaped.
    for run in ProvisioningRun.objects.all():
        claims = AuditLogEntry.objects.filter(action="provisioning_run.claim", object_id=str(run.pk)).count()
        assert (claims, run.attempts) == (1, 1), f"run {run.pk} claimed {claims} times, {run.attempts} attempts"
        steps = list(ProvisioningStep.objects.filter(run=run).values_list("index", "status", "attempts"))
        assert [i for i, _, _ in steps] == list(range(len(run.plan["steps"]) + 1))
        assert {(s, a) for _, s, a in steps} == {("succeeded", 1)}, steps
    assert not AuditLogEntry.objects.filter(action__in=["provisioning_run.reaped", "provisioning_run.failed"]).exists()
    for provisioned in Environment.objects.filter(name__in=ENVIRONMENTS):
        live = offline_store_for(provisioned).describe()
        assert sorted(live) == [f"c{i}_features" for i in range(1, 9)]
        c1 = live["c1_features"]
        assert len(c1.columns) == len({c.name for c in c1.columns}) == 150 + 3
        for n, name in enumerate(_c1_feature_names()[:CHANGES_PER_ENVIRONMENT]):
            assert c1.column(name).description == f"Described again ({n}) while the broker restarts."
    # The worker reconnected (it is the same process) and saw the connection go.
    log = log_path.read_text(errors="replace")
    assert worker.returncode is not None
    assert "Connection to broker lost" in log or "Cannot connect to redis" in log, log_tail(log_path)
    duplicates = log.count("run already claimed or finished")
    soak_record(
        "broker-restart",
        restarts=len(restarts),
        outage_s=round(max(restarts), 1),
        runs_queued=len(sent),
        queued_in_redis_at_restart=queued_in_redis,
        unacked_at_restart=unacked,
        runs_completed=ProvisioningRun.objects.filter(state="succeeded").count(),
        runs_lost=ProvisioningRun.objects.exclude(state="succeeded").count(),
        applied_twice=0,
        duplicate_deliveries_ignored=duplicates,
        seconds=round(elapsed, 1),
    )
