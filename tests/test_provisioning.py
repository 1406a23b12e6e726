"""The provisioning engine on the embedded stores, in process: runs, resumption, retries, drift, costs."""

import datetime as dt
import time
from typing import Any

import duckdb
import pytest
from django.utils import timezone

from catalog.models import AuditLogEntry, ChangeRequest, Environment, Feature
from catalog.services import change_request_approve, change_request_submit
from provisioning import runner
from provisioning.backends import offline_store_for, online_store_for
from provisioning.drift import drift_findings
from provisioning.errors import TransientStoreError
from provisioning.heartbeat import heartbeat
from provisioning.models import ProvisioningRun, ProvisioningStep
from provisioning.offline.duckdb_store import DuckDBOfflineStore
from tests.vertex_fake import VertexFake

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stores(isolated_stores, settings):
    settings.FCC_STEP_BACKOFF_SECONDS = 0.001


@pytest.fixture
def dev():
    return Environment.objects.get(name="dev")


@pytest.fixture
def provisioned(loaded, dev):
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    return run


def _change(users, specs, mutate, title="change"):
    c1 = next(s for s in specs if s["component"] == "c1")
    mutate(c1)
    result = change_request_submit(user=users["dave"], environment_name="dev", title=title, payload={"specs": [c1]})
    cr, missing = change_request_approve(user=users["alice"], change_request_id=result.change_request.pk)
    assert missing == []
    return cr, ProvisioningRun.objects.get(change_request=cr)


def _duck(dev) -> DuckDBOfflineStore:
    store = offline_store_for(dev)
    assert isinstance(store, DuckDBOfflineStore)
    return store


def test_bootstrap_run_provisions_everything_and_drift_is_clean(users, provisioned, dev, client_for):
    steps = list(ProvisioningStep.objects.filter(run=provisioned).values_list("kind", "status"))
    assert steps[0] == ("preflight", "succeeded")
    assert [k for k, _ in steps].count("create_table") == 8
    assert {s for _, s in steps} == {"succeeded"}
    response = client_for("erin").post("/api/v1/environments/dev/drift/")
    assert response.status_code == 201, response.json()
    assert response.json()["consistent"] is True
    assert response.json()["findings"] == []
    assert client_for("erin").get("/api/v1/environments/dev/drift/").json()["id"] == response.json()["id"]


def test_drift_reports_what_the_live_store_has_and_lacks(users, provisioned, dev, client_for):
    with _duck(dev).connect() as con:
        con.execute('ALTER TABLE market_regime_dev.c2_features DROP COLUMN "net_delta_exposure"')
        con.execute("ALTER TABLE market_regime_dev.c3_features ADD COLUMN rogue DOUBLE")
        con.execute("CREATE TABLE market_regime_dev.scratch (x INTEGER)")
        con.execute("DROP VIEW market_regime_dev.training_dataset")
    body = client_for("erin").post("/api/v1/environments/dev/drift/").json()
    kinds = {(f["kind"], f["target"]) for f in body["findings"]}
    assert body["consistent"] is False
    assert ("missing_column", "market_regime_dev.c2_features.net_delta_exposure") in kinds
    assert ("extra_column", "market_regime_dev.c3_features.rogue") in kinds
    assert ("extra_table", "market_regime_dev.scratch") in kinds
    assert ("missing_view", "market_regime_dev.training_dataset") in kinds


@pytest.fixture
def vertex_fake():
    server = VertexFake().start()
    yield server
    server.stop()


def test_bootstrap_on_vertex_registers_every_feature_serves_the_online_ones_and_drift_sees_a_missing_one(
    users, loaded, dev, settings, vertex_fake, client_for
):
    settings.FCC_STORES = {
        **settings.FCC_STORES,
        "dev": {
            **settings.FCC_STORES["dev"],
            "online": "vertex",
            "online_options": {
                "api_endpoint": vertex_fake.http_endpoint,
                "transport": "rest",
                "operation_timeout_seconds": 10,
                "request_timeout_seconds": 10,
            },
        },
    }
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded", run.steps.values_list("error", flat=True)
    catalog = list(Feature.objects.filter(environment=dev).select_related("component"))
    per_component: dict[str, int] = {}
    for feature in catalog:
        per_component[feature.component.key] = per_component.get(feature.component.key, 0) + 1
    location = f"projects/{dev.gcp_project}/locations/{dev.region}"

    # A FeatureGroup per component and a Feature per feature of the catalog, online or not ...
    groups = {n for n in vertex_fake.resources if "/featureGroups/" in n and "/features/" not in n}
    assert groups == {f"{location}/featureGroups/market_regime_dev_c{i}" for i in range(1, 9)}
    registered = {n for n in vertex_fake.resources if "/features/" in n}
    group_of = {f.name: f"{location}/featureGroups/market_regime_dev_{f.component.key}" for f in catalog}
    assert registered == {f"{group_of[f.name]}/features/{f.name}" for f in catalog}
    assert len(registered) == 932
    # ... created in batches of at most 100 per group (13 calls for 932 features), never one call each.
    batches = vertex_fake.calls("BatchCreateFeatures")
    assert sorted(len(c.body["requests"]) for c in batches) == sorted(
        min(100, n - start) for n in per_component.values() for start in range(0, n, 100)
    )
    assert vertex_fake.calls("CreateFeature") == []
    # The feature view serves the 32 online features only.
    [view] = [r for n, r in vertex_fake.resources.items() if "/featureViews/" in n]
    served = {f for g in view["featureRegistrySource"]["featureGroups"] for f in g["featureIds"]}
    assert served == {f.name for f in catalog if f.online}
    assert len(served) == 32
    # Each group reads its component's source view: every feature under its name, keyed by entity id.
    with _duck(dev).connect(read_only=True) as con:
        columns = [r[0] for r in con.execute("DESCRIBE market_regime_dev.c4_features_online").fetchall()]
    assert columns[:2] == ["entity_id", "feature_timestamp"]
    assert sorted(columns[2:]) == sorted(f.name for f in catalog if f.component.key == "c4")

    clean = client_for("erin").post("/api/v1/environments/dev/drift/").json()
    assert (clean["consistent"], clean["findings"]) == (True, [])

    offline_only = next(f for f in catalog if f.component.key == "c4" and not f.online)
    del vertex_fake.resources[f"{location}/featureGroups/market_regime_dev_c4/features/{offline_only.name}"]
    drifted = client_for("erin").post("/api/v1/environments/dev/drift/").json()
    assert drifted["consistent"] is False
    assert [(f["kind"], f["target"]) for f in drifted["findings"]] == [
        ("missing_registered_feature", f"c4.{offline_only.name}")
    ]


def test_costs_per_table_and_per_change(users, provisioned, dev, client_for):
    body = client_for("erin").get("/api/v1/environments/dev/costs/").json()
    assert [t["table"] for t in body["tables"]] == [f"c{i}_features" for i in range(1, 9)]
    assert body["tables"][0]["component"] == "c1"
    assert body["tables"][0]["team"] == "team-straddle"
    assert body["online_node_hours_per_month"] == {"min": 2 * 730, "max": 10 * 730}


def test_breaking_change_adds_a_version_column_and_keeps_the_old_data(users, provisioned, dev, specs):
    with _duck(dev).connect() as con:
        con.execute(
            "INSERT INTO market_regime_dev.c1_features (symbol, ts_minute, dte, atm_straddle_premium) "
            "VALUES ('NIFTY', TIMESTAMPTZ '2026-11-02 04:00:00+00', 3, 101.5)"
        )

    def breaking(c1):
        next(f for f in c1["features"] if f["name"] == "atm_straddle_premium")["dtype"] = "string"

    cr, run = _change(users, specs, breaking)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    cr.refresh_from_db()
    assert cr.state == "applied"
    table = _duck(dev).describe()["c1_features"]
    assert table.column("atm_straddle_premium").type == "FLOAT64"
    assert table.column("atm_straddle_premium__v2").type == "STRING"
    with _duck(dev).connect(read_only=True) as con:
        assert con.execute("SELECT atm_straddle_premium FROM market_regime_dev.c1_features").fetchall() == [(101.5,)]
        view_columns = [r[0] for r in con.execute("DESCRIBE market_regime_dev.training_dataset").fetchall()]
    assert "atm_straddle_premium" in view_columns
    assert "atm_straddle_premium__v2" not in view_columns  # the view exposes the current version by name
    assert run.backfills.count() == 1
    assert online_store_for(dev).describe() is not None


def test_transient_errors_are_retried_within_the_bound(users, provisioned, dev, specs, monkeypatch):
    calls = {"n": 0}
    original = DuckDBOfflineStore.add_columns

    def flaky(self, table, columns):
        calls["n"] += 1
        if calls["n"] < 3:
            raise TransientStoreError("503 from the store")
        return original(self, table, columns)

    monkeypatch.setattr(DuckDBOfflineStore, "add_columns", flaky)
    _cr, run = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_retry_probe")))
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    assert ProvisioningStep.objects.get(run=run, kind="add_columns").attempts == 3


def test_transient_errors_past_the_bound_fail_the_run_and_the_change_request(
    users, provisioned, dev, specs, monkeypatch, settings
):
    settings.FCC_STEP_MAX_ATTEMPTS = 2

    def down(self, table, columns):
        raise TransientStoreError("503 from the store")

    monkeypatch.setattr(DuckDBOfflineStore, "add_columns", down)
    cr, run = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_never")))
    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    run.refresh_from_db()
    cr.refresh_from_db()
    assert "gave up after 2 attempts" in run.error
    assert cr.state == "failed"
    assert "add_columns c1_features" in cr.failure_reason


def test_a_failed_run_retried_resumes_at_the_first_unfinished_step(
    users, provisioned, dev, specs, monkeypatch, client_for
):
    def broken(self, table, columns):
        raise duckdb.CatalogException("table is being rebuilt")

    monkeypatch.setattr(DuckDBOfflineStore, "add_columns", broken)
    cr, run = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_resume")))
    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    monkeypatch.undo()
    refused = client_for("dave").post(f"/api/v1/provisioning-runs/{run.pk}/retry/")
    assert refused.status_code == 403
    retried = client_for("carol").post(f"/api/v1/provisioning-runs/{run.pk}/retry/")
    assert retried.status_code == 202, retried.json()
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    attempts = dict(ProvisioningStep.objects.filter(run=run).values_list("kind", "attempts"))
    assert attempts["preflight"] == 1  # not run again
    assert attempts["add_columns"] == 2
    cr.refresh_from_db()
    assert cr.state == ChangeRequest.State.APPLIED


def test_a_run_delivered_twice_is_applied_once(users, provisioned, dev):
    assert runner.run_execute(run_id=provisioned.pk, worker="late") == "not-claimed"
    assert ProvisioningStep.objects.filter(run=provisioned, attempts__gt=1).count() == 0


def test_the_reaper_frees_a_run_whose_worker_died_and_the_rerun_converges(users, loaded, dev):
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_claim(run.pk, "dead-worker")
    # The dead worker had finished the preflight and the dataset, and was inside create_table c1.
    for index, kind in enumerate(["preflight", "ensure_dataset"]):
        ProvisioningStep.objects.create(run=run, index=index, kind=kind, status="succeeded", attempts=1)
    ProvisioningStep.objects.create(
        run=run, index=2, kind="create_table", target="c1_features", status="running", attempts=1
    )
    _duck(dev).ensure_dataset()
    assert runner.runs_reap_stale() == []  # its heartbeat is fresh
    ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now() - dt.timedelta(hours=1))
    assert runner.runs_reap_stale() == [run.pk]
    assert runner.run_execute(run_id=run.pk, worker="new-worker") == "succeeded"
    assert sorted(_duck(dev).describe()) == [f"c{i}_features" for i in range(1, 9)]
    assert ProvisioningStep.objects.get(run=run, index=1).attempts == 1


@pytest.mark.django_db(transaction=True)  # the heartbeat thread writes on its own connection
def test_a_step_longer_than_the_stale_period_is_not_reaped_while_its_worker_lives(users, loaded, dev, settings):
    settings.FCC_RUN_STALE_SECONDS = 1
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    reaped: list[list[int]] = []
    execute = runner._execute_step

    def slow(run_, context, step):
        if step["kind"] == "ensure_dataset":
            time.sleep(3)  # three stale periods inside one step
            reaped.append(runner.runs_reap_stale())
        return execute(run_, context, step)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "_execute_step", slow)
        assert runner.run_execute(run_id=run.pk, worker="alive") == "succeeded"
    assert reaped == [[]]
    run.refresh_from_db()
    assert run.attempts == 1
    assert not AuditLogEntry.objects.filter(action="provisioning_run.reaped").exists()


@pytest.mark.django_db(transaction=True)
def test_a_heartbeat_does_not_keep_alive_a_job_another_worker_holds(users, loaded, dev, settings):
    settings.FCC_RUN_STALE_SECONDS = 1
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_claim(run.pk, "second-worker")
    old = timezone.now() - dt.timedelta(hours=1)
    ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=old)
    with heartbeat(ProvisioningRun, run.pk, state=ProvisioningRun.State.RUNNING, claimed_by="first-worker"):
        time.sleep(1)
    assert ProvisioningRun.objects.get(pk=run.pk).heartbeat_at == old
    with heartbeat(ProvisioningRun, run.pk, state=ProvisioningRun.State.RUNNING, claimed_by="second-worker"):
        time.sleep(1)
    beaten = ProvisioningRun.objects.get(pk=run.pk).heartbeat_at
    assert beaten is not None
    assert beaten > old


def test_runs_of_one_environment_apply_in_revision_order(users, loaded, dev, specs):
    _cr, second = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_order")))
    with pytest.raises(runner.RunNotReady):
        runner.run_execute(run_id=second.pk, worker="test")


def test_a_run_that_waits_its_turn_is_sent_by_the_run_before_it(users, loaded, dev, specs, monkeypatch):
    """The task of a run whose earlier run is unfinished ends without a message of its own (none waits in the
    broker, where a restart could lose it); the earlier run's task sends it when it ends, and the reaper sends
    only a run whose turn it is."""
    from provisioning import dispatch
    from workers import tasks

    sent: list[tuple[int, Any]] = []

    def send(task, job_id, *, job, retry_policy=None):
        sent.append((job_id, retry_policy))
        return True

    monkeypatch.setattr(dispatch, "task_send", send)
    first = ProvisioningRun.objects.get(environment=dev, revision=1)
    _cr, second = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_order")))
    tasks.provisioning_run_execute.run(second.pk)
    assert ProvisioningRun.objects.get(pk=second.pk).state == "queued"
    assert sent == []
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    ProvisioningRun.objects.filter(pk__in=[first.pk, second.pk]).update(created_at=an_hour_ago)
    assert runner.runs_reap_stale() == [first.pk]  # the second one's turn has not come
    tasks.provisioning_run_execute.run(first.pk)
    assert ProvisioningRun.objects.get(pk=first.pk).state == "succeeded"
    assert sent == [(second.pk, dispatch.WORKER_PUBLISH_RETRY_POLICY)]
    assert runner.runs_reap_stale() == [second.pk]
    tasks.provisioning_run_execute.run(second.pk)
    assert ProvisioningRun.objects.get(pk=second.pk).state == "succeeded"
    assert sent[1:] == []  # the last run of the environment hands nothing on


def _new_feature(name):
    return {
        "name": name,
        "dtype": "float64",
        "description": "Probe.",
        "ttl": "48h",
        "online": False,
        "source": f"component_01.{name.replace('_', '')}",
        "tags": ["minute"],
    }


def test_the_reaper_sends_a_reaped_run_once_and_a_lost_queued_run_again(users, loaded, dev):
    """A run reaped on one tick is not sent again on the next ones (its worker gets one message, not one per
    tick); a queued run still unclaimed a stale period later is sent again (its message may have been lost)."""
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_claim(run.pk, "dead-worker")
    an_hour_ago = timezone.now() - dt.timedelta(hours=1)
    ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=an_hour_ago, created_at=an_hour_ago)
    assert runner.runs_reap_stale() == [run.pk]
    assert runner.runs_reap_stale() == []
    assert runner.runs_reap_stale() == []
    ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=an_hour_ago)
    assert runner.runs_reap_stale() == [run.pk]  # still queued a stale period later: sent again


def test_runs_approved_back_to_back_both_apply_in_order(users, provisioned, dev, specs):
    """A second change approved before the first one's run executes: the first run already sees the newer
    catalog (the catalog moves at approval, the stores follow), so its view must not name a column only the
    second run adds. Both runs succeed, in order, and the stores end at the newer catalog with no drift."""
    _first_cr, first = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_first")))
    _second_cr, second = _change(users, specs, lambda c1: c1["features"].append(_new_feature("premium_second")))
    with pytest.raises(runner.RunNotReady):
        runner.run_execute(run_id=second.pk, worker="test")
    assert runner.run_execute(run_id=first.pk, worker="test") == "succeeded", first.steps.values_list("error")
    assert runner.run_execute(run_id=second.pk, worker="test") == "succeeded", second.steps.values_list("error")
    table = _duck(dev).describe()["c1_features"]
    assert table.column("premium_first") is not None
    assert table.column("premium_second") is not None
    with _duck(dev).connect(read_only=True) as con:
        view_columns = {r[0] for r in con.execute("DESCRIBE market_regime_dev.training_dataset").fetchall()}
    assert {"premium_first", "premium_second"} <= view_columns
    # The first run added the second's column ahead and recorded it; the second run's own step found it there.
    ahead = [
        step.result["created_ahead_for_newer_revisions"]
        for step in first.steps.all()
        if "created_ahead_for_newer_revisions" in step.result
    ]
    assert ahead == [{"tables": [], "columns": {"c1_features": ["premium_second"]}}]
    second_add = ProvisioningStep.objects.get(run=second, kind="add_columns")
    assert second_add.result.get("exists") == ["premium_second"], second_add.result
    assert drift_findings(dev) == []
