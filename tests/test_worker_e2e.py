"""End to end: a change request approved through the API is applied by a separate Celery worker process."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from catalog.models import ChangeRequest
from provisioning.backends import offline_store_for, online_store_for
from provisioning.models import ProvisioningRun, ProvisioningStep
from provisioning.offline.duckdb_store import DuckDBOfflineStore

pytestmark = [pytest.mark.worker, pytest.mark.django_db(transaction=True)]
ROOT = Path(settings.BASE_DIR)


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def store_paths(isolated_stores):
    return isolated_stores


@pytest.fixture
def worker(store_paths, tmp_path):
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "FCC_STORES": json.dumps(store_paths),
        "DATA_DIR": str(settings.DATA_DIR),
        "FCC_STEP_BACKOFF_SECONDS": "0.05",
    }
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    subprocess.run(
        [*celery, "purge", "-f", "-Q", "provisioning"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60
    )
    log = (tmp_path / "worker.log").open("w")
    process = subprocess.Popen(
        [
            *celery,
            "worker",
            "-Q",
            "provisioning",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--without-heartbeat",
            "--without-mingle",
            "--without-gossip",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()


def _wait_for(predicate, timeout=90.0, what="condition", log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.25)
    detail = log.read_text()[-4000:] if log and log.exists() else ""
    raise AssertionError(f"timed out waiting for {what}\n{detail}")


def test_approved_change_is_applied_by_a_worker(worker, users, loaded, client_for, specs, tmp_path):
    log = tmp_path / "worker.log"
    from catalog.models import Environment

    dev = Environment.objects.get(name="dev")
    first = ProvisioningRun.objects.get(environment=dev, revision=1)
    _wait_for(
        lambda: ProvisioningRun.objects.filter(pk=first.pk, state="succeeded").exists(),
        what="the bootstrap run",
        log=log,
    )

    store = offline_store_for(dev)
    live = store.describe()
    assert sorted(live) == [f"c{i}_features" for i in range(1, 9)]
    c1 = live["c1_features"]
    assert c1.partition_column == "ts_minute"
    assert c1.cluster_by == ("symbol", "dte")
    assert c1.require_partition_filter is True
    assert len(c1.columns) == 150 + 3
    assert store.views() == sorted(["training_dataset", *(f"c{i}_features_online" for i in range(1, 9))])
    online = online_store_for(dev).describe()
    assert online is not None
    assert len(online.features) == 32

    c1_spec = next(s for s in specs if s["component"] == "c1")
    c1_spec["features"].append(
        {
            "name": "atm_straddle_premium_ema_200",
            "dtype": "float64",
            "description": "EMA 200.",
            "ttl": "48h",
            "online": False,
            "source": "component_01.atmStraddlePremiumEma200",
            "tags": ["ema"],
        }
    )
    target = next(
        f
        for f in c1_spec["features"]
        if f["dtype"] == "float64" and not f["online"] and f["name"] != "atm_straddle_premium_ema_200"
    )
    target["dtype"] = "string"  # breaking: a new version column and a backfill
    response = client_for("dave").post(
        "/api/v1/change-requests/", {"environment": "dev", "title": "EMA 200", "specs": [c1_spec]}, format="json"
    )
    assert response.status_code == 201, response.json()
    cr_id = response.json()["change_request"]["id"]
    approve = client_for("alice").post(f"/api/v1/change-requests/{cr_id}/approve/", {"comment": "ok"}, format="json")
    assert approve.status_code == 200, approve.json()

    _wait_for(
        lambda: ChangeRequest.objects.get(pk=cr_id).state == "applied", what="the change request to be applied", log=log
    )
    c1 = store.describe()["c1_features"]
    assert c1.column("atm_straddle_premium_ema_200").type == "FLOAT64"
    assert c1.column(f"{target['name']}__v2").type == "STRING"
    assert c1.column(target["name"]).type == "FLOAT64"  # the old version's data is kept
    run = ProvisioningRun.objects.get(change_request_id=cr_id)
    steps = list(ProvisioningStep.objects.filter(run=run).values_list("kind", "status"))
    assert ("add_columns", "succeeded") in steps
    assert ("schedule_backfill", "succeeded") in steps
    assert all(status == "succeeded" for _, status in steps)
    assert isinstance(store, DuckDBOfflineStore)
    with store.connect(read_only=True) as duck:
        columns = [row[0] for row in duck.execute("DESCRIBE market_regime_dev.training_dataset").fetchall()]
    assert target["name"] in columns
    assert "atm_straddle_premium_ema_200" in columns


def _start_worker(env, log_path, beat=False):
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "provisioning", "--pool", "solo"]
    command += ["--loglevel", "INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
    if beat:
        command += ["--beat", "--schedule", str(log_path.with_suffix(".beat"))]
    log = log_path.open("a")
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log


@pytest.mark.parametrize("kill_after_steps", [1, 4, 9])
def test_a_worker_killed_mid_run_is_replaced_and_the_run_converges(store_paths, tmp_path, users, kill_after_steps):
    """SIGKILL the worker while it provisions dev; a new worker (its beat's reaper re-queues the stale run)
    finishes it: every step recorded once, every table present once, nothing half applied."""
    import signal

    from catalog.models import Environment
    from catalog.services import catalog_load

    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "FCC_STORES": json.dumps(store_paths),
        "DATA_DIR": str(settings.DATA_DIR),
        "FCC_RUN_STALE_SECONDS": "3",
        "FCC_REAPER_SECONDS": "1",
    }
    celery = [sys.executable, "-m", "celery", "-A", "config"]
    subprocess.run(
        [*celery, "purge", "-f", "-Q", "provisioning"], cwd=ROOT, env=env, check=True, capture_output=True, timeout=60
    )
    log_path = tmp_path / "workers.log"
    first, first_log = _start_worker(env, log_path)
    try:
        catalog_load(specs_dir=Path(settings.FCC_SPECS_DIR), environment_names=["dev"])
        dev = Environment.objects.get(name="dev")
        run = ProvisioningRun.objects.get(environment=dev, revision=1)
        _wait_for(
            lambda: (
                ProvisioningStep.objects.filter(run=run, status="succeeded").count() >= kill_after_steps
                or ProvisioningRun.objects.filter(pk=run.pk, state="succeeded").exists()
            ),
            what=f"{kill_after_steps} steps",
            log=log_path,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=20)
    finally:
        first_log.close()
    second, second_log = _start_worker(env, log_path, beat=True)
    try:
        _wait_for(
            lambda: ProvisioningRun.objects.filter(pk=run.pk, state="succeeded").exists(),
            what="the run to converge",
            log=log_path,
        )
    finally:
        second.terminate()
        second.wait(timeout=20)
        second_log.close()
    steps = list(ProvisioningStep.objects.filter(run=run).values_list("index", "kind", "status"))
    assert [i for i, _, _ in steps] == list(range(len(run.plan["steps"]) + 1))
    assert {s for _, _, s in steps} == {"succeeded"}
    live = offline_store_for(dev).describe()
    assert sorted(live) == [f"c{i}_features" for i in range(1, 9)]
    assert all(len({c.name for c in t.columns}) == len(t.columns) for t in live.values())
    assert len(live["c6_features"].columns) == 220 + 3
    from catalog.models import AuditLogEntry

    claims = AuditLogEntry.objects.filter(action="provisioning_run.claim", object_id=str(run.pk)).count()
    finished = ProvisioningRun.objects.get(pk=run.pk)
    assert claims == finished.attempts
    if claims > 1:
        assert AuditLogEntry.objects.filter(action="provisioning_run.reaped", object_id=str(run.pk)).exists()
