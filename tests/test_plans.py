"""Plans through change_request_plan: what each kind of change is classified as, the `field: old -> new` lines,
the infrastructure steps it implies, and that planning writes nothing."""

import copy
import json
import random
from typing import Any

import pytest
from django.db import transaction

from catalog import rules
from catalog.models import AuditLogEntry, ChangeRequest, Environment, Feature, FeatureVersion
from catalog.plans import plan_text, usd_format
from catalog.services import change_request_plan, plan_apply
from provisioning.models import ProvisioningRun
from tests.conftest import mini_spec

pytestmark = pytest.mark.django_db


def apply_specs(specs: list[dict[str, Any]], environment: str = "dev") -> int:
    """Applies specs the way catalog_load does (no change request): the state a plan is computed against."""
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(name=environment)
        result = change_request_plan(environment=env, payload={"specs": specs})
        return plan_apply(
            environment=env, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None
        )


def plan_for(specs: list[dict[str, Any]], environment: str = "dev") -> dict[str, Any]:
    return change_request_plan(environment=Environment.objects.get(name=environment), payload={"specs": specs}).plan


def kinds(plan: dict[str, Any]) -> list[str]:
    return [step["kind"] for step in plan["steps"]]


def step(plan: dict[str, Any], kind: str) -> dict[str, Any]:
    matching = [s for s in plan["steps"] if s["kind"] == kind]
    assert len(matching) == 1, plan["steps"]
    return matching[0]


def only_change(plan: dict[str, Any]) -> dict[str, Any]:
    assert len(plan["changes"]) == 1, plan["changes"]
    return plan["changes"][0]


@pytest.fixture
def base(reference) -> dict[str, Any]:
    """c1 applied to dev with three features: c1_alpha (online, float64), c1_beta (int64), c1_gamma_ratio."""
    spec = mini_spec()
    spec["features"][1]["dtype"] = "int64"
    apply_specs([spec])
    return spec


def test_a_first_plan_creates_the_dataset_and_tables(reference):
    plan = plan_for([mini_spec("c1"), mini_spec("c2", owner="team-greeks")])
    assert plan["summary"]["create"] == 6
    assert kinds(plan) == ["ensure_dataset", "create_table", "create_table", "replace_view", "update_online_store"]
    assert step(plan, "update_online_store")["features"] == ["c1_alpha", "c2_alpha"]
    assert plan["is_breaking"] is False


def test_same_real_specs_again_give_an_empty_plan(loaded, client_for, specs):
    versions = FeatureVersion.objects.count()
    plan = plan_for(specs)
    assert plan["is_empty"] is True
    assert plan["changes"] == []
    assert plan["component_changes"] == []
    assert plan["steps"] == []
    assert "No changes" in plan_text(plan)
    response = client_for("dave").post(
        "/api/v1/change-requests/", {"environment": "dev", "specs": specs}, format="json"
    )
    assert response.status_code == 200, response.content[:500]
    assert response.json()["change_request"] is None
    assert response.json()["plan"]["is_empty"] is True
    assert ChangeRequest.objects.count() == 0
    assert not AuditLogEntry.objects.filter(action="change_request.submit").exists()
    assert FeatureVersion.objects.count() == versions
    assert Environment.objects.get(name="dev").revision == 1


@pytest.mark.parametrize(
    ("field", "new"),
    [
        ("description", "Beta, measured differently."),
        ("tags", ["minute", "momentum"]),
        ("ttl", "30d"),
        ("source", "component_01.betaRenamedInRegistry"),
    ],
)
def test_metadata_change_is_one_field_line(base, field, new):
    spec = copy.deepcopy(base)
    old = spec["features"][1][field]
    spec["features"][1][field] = new
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == ("c1_beta", "update", "metadata-only")
    assert len(change["fields"]) == 1
    line = change["fields"][0]
    assert line["field"] == field
    if field == "ttl":
        # TTLs are shown normalised (48h reads 2d): compare durations.
        assert (rules.ttl_parse(line["old"]), rules.ttl_parse(line["new"])) == (
            rules.ttl_parse(old),
            rules.ttl_parse(new),
        )
    else:
        assert (line["old"], line["new"]) == (old, new)
    assert change["version"] == {"old": 1, "new": 1}
    assert plan["summary"]["metadata-only"] == 1
    assert plan["is_breaking"] is False
    # Metadata only: no column, no view, no backfill. c1_beta is offline, but the online store registers every
    # feature with its TTL (Vertex AI: a label of its Feature), so a TTL change updates that registration.
    assert kinds(plan) == ["update_table_metadata", *(["update_online_store"] if field == "ttl" else [])]
    assert f"      {field}: {json.dumps(line['old'])} -> {json.dumps(line['new'])}" in plan_text(plan).splitlines()


def test_several_fields_of_one_feature_give_one_line_each(base):
    spec = copy.deepcopy(base)
    spec["features"][2].update(description="Changed.", tags=["daily"], ttl="30d")
    change = only_change(plan_for([spec]))
    assert {f["field"] for f in change["fields"]} == {"description", "tags", "ttl"}
    assert change["classification"] == "metadata-only"


def test_ttl_change_of_an_online_feature_updates_the_online_store(base):
    spec = copy.deepcopy(base)
    spec["features"][0]["ttl"] = "30d"
    plan = plan_for([spec])
    assert only_change(plan)["classification"] == "metadata-only"
    assert "update_online_store" in kinds(plan)


def test_new_feature_is_additive_with_an_add_columns_step(base):
    spec = copy.deepcopy(base)
    spec["features"].append(
        {**spec["features"][2], "name": "c1_delta", "source": "component_01.delta", "dtype": "string"}
    )
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == ("c1_delta", "create", "additive")
    assert change["version"] == {"old": None, "new": 1}
    assert change["column"] == "c1_delta"
    add = step(plan, "add_columns")
    assert (add["table"], add["columns"]) == ("c1_features", [{"name": "c1_delta", "type": "STRING"}])
    assert "replace_view" in kinds(plan)
    # An offline feature too: the online store registers it (its online features do not change).
    assert step(plan, "update_online_store")["features"] == ["c1_alpha"]
    assert "schedule_backfill" not in kinds(plan)
    assert plan["is_breaking"] is False
    assert "  + c1.c1_delta (create, additive)" in plan_text(plan).splitlines()
    # A new column on a small table costs fractions of a cent: the text shows them, not "$0.00".
    cost_line = next(line for line in plan_text(plan).splitlines() if line.startswith("  Cost:"))
    assert plan["cost"]["storage_usd_per_month"] > 0
    assert "+$0.00/month storage" not in cost_line
    assert usd_format(plan["cost"]["storage_usd_per_month"]) in cost_line


def test_widening_int64_to_float64_is_additive_in_place(base):
    spec = copy.deepcopy(base)
    spec["features"][1]["dtype"] = "float64"
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["action"], change["classification"]) == ("update", "additive")
    assert change["fields"] == [{"field": "dtype", "old": "int64", "new": "float64"}]
    assert change["version"] == {"old": 1, "new": 1}
    assert change["column"] == "c1_beta"
    widen = step(plan, "widen_columns")
    assert widen["columns"] == [{"name": "c1_beta", "old": "INT64", "new": "FLOAT64"}]
    assert "add_columns" not in kinds(plan)
    assert "schedule_backfill" not in kinds(plan)
    assert plan["is_breaking"] is False


def test_float64_to_string_is_breaking_with_a_new_version_column_and_backfill(base):
    spec = copy.deepcopy(base)
    spec["features"][2]["dtype"] = "string"
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == ("c1_gamma_ratio", "update", "breaking")
    assert change["fields"] == [{"field": "dtype", "old": "float64", "new": "string"}]
    assert change["version"] == {"old": 1, "new": 2}
    assert change["column"] == "c1_gamma_ratio__v2"
    assert step(plan, "add_columns")["columns"] == [{"name": "c1_gamma_ratio__v2", "type": "STRING"}]
    backfill = step(plan, "schedule_backfill")
    assert (backfill["component"], backfill["feature"], backfill["column"]) == (
        "c1",
        "c1_gamma_ratio",
        "c1_gamma_ratio__v2",
    )
    assert "widen_columns" not in kinds(plan)
    assert plan["is_breaking"] is True
    assert plan["summary"]["breaking"] == 1


@pytest.mark.parametrize(
    ("old", "new"), [("float64", "int64"), ("numeric", "int64"), ("float64", "numeric"), ("int64", "bool")]
)
def test_narrowing_dtypes_are_breaking(reference, old, new):
    spec = mini_spec()
    spec["features"][2]["dtype"] = old
    apply_specs([spec])
    spec["features"][2]["dtype"] = new
    change = only_change(plan_for([spec]))
    assert change["classification"] == "breaking"
    assert change["version"]["new"] == 2


@pytest.mark.parametrize(("old", "new"), sorted(rules.WIDENINGS))
def test_every_widening_is_additive(reference, old, new):
    spec = mini_spec()
    spec["features"][2]["dtype"] = old
    apply_specs([spec])
    spec["features"][2]["dtype"] = new
    plan = plan_for([spec])
    assert only_change(plan)["classification"] == "additive"
    assert "widen_columns" in kinds(plan)


def test_breaking_dtype_change_applied_keeps_the_old_version(base):
    spec = copy.deepcopy(base)
    spec["features"][2]["dtype"] = "string"
    apply_specs([spec])
    feature = Feature.objects.get(environment__name="dev", name="c1_gamma_ratio")
    assert (feature.version, feature.column_name, feature.dtype) == (2, "c1_gamma_ratio__v2", "string")
    assert list(feature.versions.values_list("version", "column_name", "dtype")) == [
        (1, "c1_gamma_ratio", "float64"),
        (2, "c1_gamma_ratio__v2", "string"),
    ]


def test_removal_deprecates_and_is_breaking(base):
    spec = copy.deepcopy(base)
    del spec["features"][2]
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == (
        "c1_gamma_ratio",
        "deprecate",
        "breaking",
    )
    assert change["fields"] == [{"field": "status", "old": "active", "new": "deprecated"}]
    assert change["column"] == "c1_gamma_ratio"
    # The column and its data are kept: nothing is added or dropped.
    assert "add_columns" not in kinds(plan)
    assert "schedule_backfill" not in kinds(plan)
    assert plan["is_breaking"] is True
    assert plan["summary"]["deprecate"] == 1


def test_rename_is_detected_by_the_same_source(base):
    spec = copy.deepcopy(base)
    spec["features"][2]["name"] = "c1_gamma_share"
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == ("c1_gamma_share", "rename", "breaking")
    assert change["renamed_from"] == "c1_gamma_ratio"
    assert change["fields"][0] == {"field": "name", "old": "c1_gamma_ratio", "new": "c1_gamma_share"}
    assert plan["summary"]["rename"] == 1
    assert plan["summary"]["create"] == 0
    assert plan["summary"]["deprecate"] == 0
    assert step(plan, "schedule_backfill")["feature"] == "c1_gamma_share"
    assert step(plan, "add_columns")["columns"] == [{"name": change["column"], "type": "FLOAT64"}]


def test_new_name_with_a_new_source_is_a_removal_and_a_create(base):
    spec = copy.deepcopy(base)
    spec["features"][2].update(name="c1_gamma_share", source="component_01.gammaShare")
    plan = plan_for([spec])
    assert sorted((c["feature"], c["action"]) for c in plan["changes"]) == [
        ("c1_gamma_ratio", "deprecate"),
        ("c1_gamma_share", "create"),
    ]
    assert plan["summary"]["rename"] == 0


def test_online_to_offline_is_breaking(base):
    spec = copy.deepcopy(base)
    spec["features"][0]["online"] = False
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["classification"]) == ("c1_alpha", "breaking")
    assert change["fields"] == [{"field": "online", "old": True, "new": False}]
    assert step(plan, "update_online_store")["features"] == []
    assert plan["is_breaking"] is True


def test_offline_to_online_is_additive_and_updates_the_online_store(base):
    spec = copy.deepcopy(base)
    spec["features"][1]["online"] = True
    plan = plan_for([spec])
    change = only_change(plan)
    assert (change["feature"], change["classification"]) == ("c1_beta", "additive")
    assert change["fields"] == [{"field": "online", "old": False, "new": True}]
    assert step(plan, "update_online_store")["features"] == ["c1_alpha", "c1_beta"]
    assert plan["is_breaking"] is False


def test_online_store_step_lists_online_features_of_untouched_components(base):
    apply_specs([mini_spec("c2", owner="team-greeks")])
    spec = copy.deepcopy(base)
    spec["features"][1]["online"] = True
    plan = plan_for([spec])
    assert step(plan, "update_online_store")["features"] == ["c1_alpha", "c1_beta", "c2_alpha"]


def test_owner_change_is_a_metadata_only_component_change(base):
    spec = copy.deepcopy(base)
    spec["owner"] = "team-greeks"
    plan = plan_for([spec])
    assert plan["changes"] == []
    assert plan["component_changes"] == [
        {
            "component": "c1",
            "field": "owner",
            "old": "team-straddle",
            "new": "team-greeks",
            "classification": "metadata-only",
        }
    ]
    assert plan["is_empty"] is False
    assert plan["is_breaking"] is False
    assert plan["summary"]["metadata-only"] == 1
    assert "  ~ component c1: owner: team-straddle -> team-greeks [metadata-only]" in plan_text(plan).splitlines()
    apply_specs([spec])
    assert set(
        Feature.objects.filter(environment__name="dev", component__key="c1").values_list("owner__slug", flat=True)
    ) == {"team-greeks"}
    assert plan_for([spec])["is_empty"] is True


def test_reactivating_a_deprecated_feature(base):
    removed = copy.deepcopy(base)
    del removed["features"][2]
    apply_specs([removed])
    assert Feature.objects.get(name="c1_gamma_ratio").status == "deprecated"
    plan = plan_for([base])
    change = only_change(plan)
    assert (change["feature"], change["action"], change["classification"]) == (
        "c1_gamma_ratio",
        "reactivate",
        "additive",
    )
    assert change["fields"][0] == {"field": "status", "old": "deprecated", "new": "active"}
    assert change["version"] == {"old": 1, "new": 1}
    assert change["column"] == "c1_gamma_ratio"
    # Its column was kept, so nothing is added.
    assert "add_columns" not in kinds(plan)
    assert plan["summary"]["reactivate"] == 1
    apply_specs([base])
    assert Feature.objects.get(name="c1_gamma_ratio").status == "active"
    assert plan_for([base])["is_empty"] is True


def test_deprecated_feature_left_out_again_is_no_change(base):
    removed = copy.deepcopy(base)
    del removed["features"][2]
    apply_specs([removed])
    assert plan_for([removed])["is_empty"] is True


def test_planning_writes_nothing(base):
    counts = (
        ChangeRequest.objects.count(),
        AuditLogEntry.objects.count(),
        Feature.objects.count(),
        ProvisioningRun.objects.count(),
    )
    revision = Environment.objects.get(name="dev").revision
    spec = copy.deepcopy(base)
    spec["features"][2]["dtype"] = "string"
    spec["features"].append({**spec["features"][1], "name": "c1_new", "source": "component_01.new"})
    assert plan_for([spec])["is_breaking"] is True
    assert (
        ChangeRequest.objects.count(),
        AuditLogEntry.objects.count(),
        Feature.objects.count(),
        ProvisioningRun.objects.count(),
    ) == counts
    assert Environment.objects.get(name="dev").revision == revision


def test_plan_records_its_base_revision_and_the_hash_follows_it(base):
    spec = copy.deepcopy(base)
    spec["features"][1]["description"] = "Changed."
    first = change_request_plan(environment=Environment.objects.get(name="dev"), payload={"specs": [spec]})
    apply_specs([mini_spec("c2", owner="team-greeks")])
    second = change_request_plan(environment=Environment.objects.get(name="dev"), payload={"specs": [spec]})
    assert (first.plan["base_revision"], second.plan["base_revision"]) == (1, 2)
    assert first.plan["changes"] == second.plan["changes"]
    assert first.plan_hash != second.plan_hash


def test_plan_is_deterministic(base):
    spec = copy.deepcopy(base)
    spec["features"][1]["description"] = "Changed."
    hashes = {
        change_request_plan(environment=Environment.objects.get(name="dev"), payload={"specs": [spec]}).plan_hash
        for _ in range(3)
    }
    assert len(hashes) == 1


def test_shuffled_real_specs_still_give_an_empty_plan_with_the_same_hash(loaded, specs):
    env = Environment.objects.get(name="dev")
    reference_hash = change_request_plan(environment=env, payload={"specs": specs}).plan_hash
    shuffled = copy.deepcopy(specs)
    rng = random.Random(7)
    rng.shuffle(shuffled)
    for spec in shuffled:
        rng.shuffle(spec["features"])
    result = change_request_plan(environment=env, payload={"specs": shuffled})
    assert result.plan["is_empty"] is True
    assert result.plan_hash == reference_hash


def _changes_in_two_orders(base: dict[str, Any]):
    spec = copy.deepcopy(base)
    spec["features"][0]["description"] = "Alpha changed."
    spec["features"][2]["description"] = "Gamma changed."
    spec["features"].append({**spec["features"][1], "name": "c1_new", "source": "component_01.new"})
    reordered = copy.deepcopy(spec)
    reordered["features"].reverse()
    env = Environment.objects.get(name="dev")
    return (
        change_request_plan(environment=env, payload={"specs": [spec]}),
        change_request_plan(environment=env, payload={"specs": [reordered]}),
    )


def test_reordered_features_plan_the_same_changes(base):
    first, second = _changes_in_two_orders(base)

    def key(change: dict[str, Any]) -> str:
        return json.dumps(change, sort_keys=True)

    assert sorted(first.plan["changes"], key=key) == sorted(second.plan["changes"], key=key)
    assert first.plan["summary"] == second.plan["summary"]
    assert sorted(map(key, first.plan["steps"])) == sorted(map(key, second.plan["steps"]))


def test_reordered_features_give_the_same_plan_hash(base):
    first, second = _changes_in_two_orders(base)
    assert first.plan_hash == second.plan_hash
