"""The dev environment's real bootstrap plan (the 932-feature catalog) applied by the provisioning runner to the
BigQuery offline store: the real google-cloud-bigquery client against the local emulator.

Everything the plan creates applies and converges there, except the `training_dataset` view: local-bigquery
0.4.0 checks require_partition_filter on the CREATE VIEW statement itself (local_bigquery/sql/rules/tables.py,
_check: some WHERE of the statement must name ts_minute), through DDL and through the tables API alike, where
BigQuery checks it when the view is queried. The test pins that boundary exactly, so that an emulator that
lifts the rule makes it fail and the whole plan is then asserted to apply.
"""

from collections.abc import Iterator
from typing import Any

import pytest

from catalog.models import Environment, Feature
from provisioning import runner
from provisioning.backends import offline_store_for
from provisioning.drift import drift_findings
from provisioning.models import ProvisioningRun, ProvisioningStep
from tests.bigquery_emulator import Emulator, require_emulator_venv, running_emulator

pytestmark = pytest.mark.django_db
EMULATOR_RULE = "without a filter over column(s) 'ts_minute' that can be used for partition elimination"


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    venv = require_emulator_venv()
    with running_emulator(venv, tmp_path_factory.mktemp("bigquery-plan")) as running:
        yield running


@pytest.fixture
def dev(loaded: None, emulator: Emulator, settings: Any, tmp_path: Any) -> Environment:
    settings.FCC_STORES = {
        "dev": {
            "offline": "bigquery",
            "offline_options": {"api_endpoint": emulator.endpoint, "retry_deadline_seconds": 10},
            "online_options": {"path": str(tmp_path / "online")},
        }
    }
    settings.FCC_GCP_PROJECT = emulator.project
    settings.FCC_STEP_BACKOFF_SECONDS = 0.05
    environment = Environment.objects.get(name="dev")
    environment.gcp_project = emulator.project
    environment.save(update_fields=["gcp_project"])
    return environment


def test_the_dev_bootstrap_plan_applies_to_the_bigquery_emulator_up_to_the_view_it_refuses(dev: Environment) -> None:
    run = ProvisioningRun.objects.get(environment=dev)  # the bootstrap run catalog_load queued
    kinds = [step["kind"] for step in run.plan["steps"]]
    assert kinds.count("create_table") == 8
    assert "replace_view" in kinds

    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    steps = list(ProvisioningStep.objects.filter(run=run).order_by("index"))
    failed = [s for s in steps if s.status == "failed"]
    assert [s.kind for s in failed] == ["replace_view"], [(s.kind, s.status, s.error) for s in steps]
    assert EMULATOR_RULE in failed[0].error
    view_index = kinds.index("replace_view")
    assert all(s.status == "succeeded" for s in steps if s.index < view_index)

    # What the steps before the view made is what the catalog asks for: eight tables, every active feature a
    # column of its component's table, partitioned, clustered, the partition filter required, labelled.
    live = offline_store_for(dev).describe()
    assert sorted(live) == [f"c{i}_features" for i in range(1, 9)]
    for name, table in live.items():
        component = name.removesuffix("_features")
        wanted = set(
            Feature.objects.filter(environment=dev, component__key=component, status=Feature.Status.ACTIVE).values_list(
                "name", flat=True
            )
        )
        assert wanted <= {c.name for c in table.columns}, name
        assert {"symbol", "ts_minute", "dte"} <= {c.name for c in table.columns}
        assert table.partition_column == "ts_minute"
        assert table.cluster_by == ("symbol", "dte")
        assert table.require_partition_filter is True
        assert table.labels["component"] == component
        assert table.labels["environment"] == "dev"
    assert sum(len(t.columns) - 3 for t in live.values()) == 932

    # Drift sees exactly the view the emulator refused (and the online store, whose step comes after it).
    findings = {(f["kind"], f["target"]) for f in drift_findings(dev)}
    assert ("missing_view", "market_regime_dev.training_dataset") in findings
    assert {kind for kind, _ in findings} <= {"missing_view", "missing_online_view"}, findings

    # A rerun resumes at the view: nothing before it is applied again, and it fails the same way.
    done = {s.index: s.attempts for s in steps if s.status == "succeeded"}
    run.refresh_from_db()
    run.state = ProvisioningRun.State.QUEUED
    run.save(update_fields=["state"])
    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    again = {s.index: s.attempts for s in ProvisioningStep.objects.filter(run=run, status="succeeded")}
    assert again == done
    assert offline_store_for(dev).describe().keys() == live.keys()
