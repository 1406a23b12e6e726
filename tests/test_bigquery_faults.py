"""A flaky BigQuery: the provisioning runner applies a plan to the BigQuery offline store (the real client, the
local emulator) through a proxy that answers a share of the requests with 500/503 or holds them past the
client's timeout (tests/faults.py).

With a moderate share of faults the run succeeds through retries within their bound; with every request
failing it fails once the bound is spent, says why, and changes nothing, and a rerun once BigQuery answers
again converges. The plan is one the emulator supports: dataset, tables, an added column (local-bigquery
0.4.0 refuses a view over tables with require_partition_filter; see tests/test_offline_store.py).
"""

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from catalog.models import Environment
from provisioning import runner
from provisioning.backends import offline_store_for
from provisioning.models import ProvisioningRun, ProvisioningStep
from tests.bigquery_emulator import Emulator, require_emulator_venv, running_emulator
from tests.faults import FaultPlan, fault_proxy, soak_record

pytestmark = pytest.mark.django_db
COMPONENTS = ("c8", "c5")  # the smallest tables
MAX_ATTEMPTS = 6
CLIENT_DEADLINE_SECONDS = 2.0
# The shares of failed requests tried; `make soak` (bench/soak.py) tries more.
SHARES = [float(share) for share in os.environ.get("FCC_FAULT_SHARES", "0.3").split(",")]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    venv = require_emulator_venv()
    with running_emulator(venv, tmp_path_factory.mktemp("bigquery-faults")) as running:
        yield running


@pytest.fixture
def flaky(emulator: Emulator, settings: Any) -> Iterator[FaultPlan]:
    """dev's offline store is BigQuery behind the proxy; the runner's and the client's retries are bounded."""
    plan = FaultPlan(seed=7, delay_seconds=CLIENT_DEADLINE_SECONDS + 1.0)
    with fault_proxy(emulator.endpoint, plan) as endpoint:
        settings.FCC_STORES = {
            "dev": {
                "offline": "bigquery",
                "offline_options": {
                    "api_endpoint": endpoint,
                    "retry_deadline_seconds": CLIENT_DEADLINE_SECONDS,
                    "job_timeout_seconds": 30,
                },
            }
        }
        settings.FCC_STEP_MAX_ATTEMPTS = MAX_ATTEMPTS
        settings.FCC_STEP_BACKOFF_SECONDS = 0.05
        settings.FCC_GCP_PROJECT = emulator.project
        yield plan


@pytest.fixture
def dev(loaded: None, flaky: FaultPlan, emulator: Emulator) -> Environment:
    """dev with the catalog loaded; its bootstrap run (whose view the emulator refuses) is set aside, and the
    environment points at the emulator's project, without a dataset yet."""
    environment = Environment.objects.get(name="dev")
    environment.gcp_project = emulator.project
    environment.save(update_fields=["gcp_project"])
    store = offline_store_for(environment)  # the emulator outlives a test: start from no dataset
    store.client.delete_dataset(  # type: ignore[attr-defined]
        f"{store.project}.{store.dataset}", delete_contents=True, not_found_ok=True
    )
    ProvisioningRun.objects.filter(environment=environment).update(
        state=ProvisioningRun.State.FAILED, error="set aside: this test applies its own plan"
    )
    return environment


def _run(environment: Environment) -> ProvisioningRun:
    """A run of a plan the emulator supports: the dataset, two tables, a column added to one of them."""
    steps: list[dict[str, Any]] = [{"kind": "ensure_dataset"}]
    steps += [{"kind": "create_table", "component": c, "table": f"{c}_features"} for c in COMPONENTS]
    steps.append(
        {"kind": "add_columns", "table": f"{COMPONENTS[0]}_features", "columns": [{"name": "probe", "type": "FLOAT64"}]}
    )
    revision = environment.revision + ProvisioningRun.objects.filter(environment=environment).count()
    return ProvisioningRun.objects.create(
        environment=environment, revision=revision, plan={"steps": steps}, plan_hash="fault-test"
    )


def _assert_applied(environment: Environment) -> None:
    live = offline_store_for(environment).describe()
    assert sorted(live) == sorted(f"{c}_features" for c in COMPONENTS)
    for table in live.values():
        assert len(table.columns) == len({c.name for c in table.columns})
    assert live[f"{COMPONENTS[0]}_features"].column("probe").type == "FLOAT64"


@pytest.mark.parametrize("error_share", SHARES)
def test_a_flaky_bigquery_is_ridden_out_by_bounded_retries(dev, flaky, error_share):
    flaky.set(error_share=error_share, delay_share=0.05)
    run = _run(dev)
    started = time.monotonic()
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded", ProvisioningRun.objects.get(pk=run.pk).error
    elapsed = time.monotonic() - started
    attempts = list(ProvisioningStep.objects.filter(run=run).order_by("index").values_list("kind", "attempts"))
    assert all(1 <= a <= MAX_ATTEMPTS for _, a in attempts)
    assert flaky.counts["errors"] > 0
    assert max(a for _, a in attempts) > 1, f"no step needed a retry of the runner: {attempts}, {flaky.counts}"
    flaky.set(error_share=0.0)
    _assert_applied(dev)
    soak_record(
        "bigquery-flaky",
        fault_share=error_share,
        run="succeeded",
        step_attempts=sum(a for _, a in attempts),
        steps=len(attempts),
        max_step_attempts=max(a for _, a in attempts),
        injected_errors=flaky.counts["errors"],
        delayed=flaky.counts["delayed"],
        seconds=round(elapsed, 1),
    )


def test_a_bigquery_that_always_fails_fails_the_run_cleanly_and_a_rerun_converges(dev, flaky, client_for):
    flaky.set(error_share=1.0)
    run = _run(dev)
    started = time.monotonic()
    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    elapsed = time.monotonic() - started
    # The bound holds: the runner's attempts, each within the client's deadline, plus the backoff.
    assert elapsed < MAX_ATTEMPTS * (CLIENT_DEADLINE_SECONDS + 1.5) + 10
    failed = ProvisioningRun.objects.get(pk=run.pk)
    assert failed.state == "failed"
    assert f"gave up after {MAX_ATTEMPTS} attempts" in failed.error
    assert "BigQuery" in failed.error
    assert "Injected fault" in failed.error
    step = ProvisioningStep.objects.get(run=run, status="failed")
    assert step.attempts == MAX_ATTEMPTS
    assert step.index == 0  # the preflight: nothing was sent that changes anything
    flaky.set(error_share=0.0)
    assert offline_store_for(dev).describe() == {}

    # Once BigQuery answers again, a rerun (through the API, as a person would) converges.
    response = client_for("root").post(f"/api/v1/provisioning-runs/{run.pk}/retry/")
    assert response.status_code == 202, response.json()
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    steps = list(ProvisioningStep.objects.filter(run=run).values_list("status", flat=True))
    assert set(steps) == {"succeeded"}
    _assert_applied(dev)
    soak_record(
        "bigquery-flaky",
        fault_share=1.0,
        run="failed, rerun succeeded",
        step_attempts=MAX_ATTEMPTS,
        steps=1,
        max_step_attempts=MAX_ATTEMPTS,
        injected_errors=flaky.counts["errors"],
        delayed=0,
        seconds=round(elapsed, 1),
    )
