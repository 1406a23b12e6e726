"""The REST API: the role x action matrix, authentication, lists (filters, pagination), feature detail,
the OpenAPI schema and docs, and one error body shape everywhere."""

import copy
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ApiToken
from catalog.models import AuditLogEntry, ChangeRequest, Environment, Feature
from catalog.services import change_request_plan, plan_apply
from provisioning.models import ProvisioningRun
from tests.conftest import mini_spec

pytestmark = pytest.mark.django_db

API = "/api/v1"
PERSONAS = [None, "erin", "dave", "carol", "bob", "alice", "root", "gina"]
ERROR_KEYS = {"code", "message", "errors"}


def apply_specs(specs: list[dict[str, Any]], environment: str = "dev") -> int:
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(name=environment)
        result = change_request_plan(environment=env, payload={"specs": specs})
        return plan_apply(
            environment=env, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None
        )


def changed_c1(text: str = "Changed.") -> dict[str, Any]:
    spec = mini_spec()
    spec["features"][1]["description"] = text
    return spec


def assert_error_body(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.content[:500])
    body = response.json()
    assert set(body) >= ERROR_KEYS, body
    assert isinstance(body["code"], str)
    assert body["code"]
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["errors"], list)
    for error in body["errors"]:
        assert set(error) == {"path", "rule", "detail"}
    return body


@pytest.fixture
def world(reference, client_for, users) -> dict[str, Any]:
    """c1 in dev; a proposed change request by dave; an applied one (promotable); a provisioning run."""
    apply_specs([mini_spec()])
    dave = client_for("dave")
    proposed = dave.post(
        f"{API}/change-requests/", {"environment": "dev", "specs": [changed_c1("Proposed.")]}, format="json"
    )
    assert proposed.status_code == 201, proposed.content
    applied = dave.post(
        f"{API}/change-requests/", {"environment": "dev", "specs": [changed_c1("Applied.")]}, format="json"
    )
    applied_id = applied.json()["change_request"]["id"]
    assert (
        client_for("alice").post(f"{API}/change-requests/{applied_id}/approve/", {}, format="json").status_code == 200
    )
    # Stands in for provisioning finishing (the worker sets applied), so the change request can be promoted.
    ChangeRequest.objects.filter(pk=applied_id).update(state=ChangeRequest.State.APPLIED)
    # The approval moved dev: re-plan the proposed one so it can still be approved.
    proposed_id = proposed.json()["change_request"]["id"]
    assert dave.post(f"{API}/change-requests/{proposed_id}/replan/", format="json").status_code == 200
    return {
        "feature": Feature.objects.get(environment__name="dev", name="c1_beta").pk,
        "proposed": proposed_id,
        "applied": applied_id,
        "run": ProvisioningRun.objects.first().pk,
        "audit": AuditLogEntry.objects.first().pk,
    }


READS = {
    "features.list": "/features/",
    "features.detail": "/features/{feature}/",
    "components.list": "/components/",
    "components.detail": "/components/c1/",
    "teams.list": "/teams/",
    "teams.detail": "/teams/team-straddle/",
    "environments.list": "/environments/",
    "environments.detail": "/environments/dev/",
    "change_requests.list": "/change-requests/",
    "change_requests.detail": "/change-requests/{proposed}/",
    "provisioning_runs.list": "/provisioning-runs/",
    "provisioning_runs.detail": "/provisioning-runs/{run}/",
    "audit_log.list": "/audit-log/",
    "audit_log.detail": "/audit-log/{audit}/",
}


def _write(action: str, world: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if action == "submit":
        return "/change-requests/", {"environment": "dev", "specs": [changed_c1("Submitted.")]}
    if action == "plan":
        return "/change-requests/plan/", {"environment": "dev", "specs": [changed_c1("Planned.")]}
    if action == "approve":
        return f"/change-requests/{world['proposed']}/approve/", {"comment": "ok"}
    if action == "reject":
        return f"/change-requests/{world['proposed']}/reject/", {"comment": "no"}
    if action == "promote":
        return f"/change-requests/{world['applied']}/promote/", {}
    raise AssertionError(action)


#                    anonymous erin dave carol bob  alice root gina
WRITES = {
    "submit": (401, 403, 201, 403, 201, 201, 201, 403),
    "plan": (401, 200, 200, 200, 200, 200, 200, 200),
    "approve": (401, 403, 403, 200, 200, 200, 200, 403),
    "reject": (401, 403, 403, 200, 200, 200, 200, 403),
    "promote": (401, 403, 201, 403, 201, 201, 201, 403),
}
READ_STATUSES = (401, 200, 200, 200, 200, 200, 200, 200)

MATRIX = [
    pytest.param(action, persona, status, id=f"{action}-{persona or 'anonymous'}")
    for action, statuses in [*((a, READ_STATUSES) for a in READS), *WRITES.items()]
    for persona, status in zip(PERSONAS, statuses, strict=True)
]


@pytest.mark.parametrize(("action", "persona", "status"), MATRIX)
def test_role_action_matrix(world, client_for, action, persona, status):
    client = client_for(persona)
    before = ChangeRequest.objects.count()
    if action in READS:
        response = client.get(API + READS[action].format(**world))
    else:
        path, body = _write(action, world)
        response = client.post(API + path, body, format="json")
    assert response.status_code == status, (response.status_code, response.content[:300])
    if status >= 400:
        assert_error_body(response, status)
        assert ChangeRequest.objects.count() == before
        if status == 401:
            assert response["WWW-Authenticate"] == "Token"
    if action in ("approve", "reject") and status >= 400:
        assert ChangeRequest.objects.get(pk=world["proposed"]).state == "proposed"


def test_unauthenticated_request_gets_401_with_the_common_body(reference):
    response = APIClient().get(f"{API}/features/")
    body = assert_error_body(response, 401)
    assert body["code"] == "not_authenticated"
    assert body["errors"] == []


@pytest.mark.parametrize(
    "header",
    ["Token not-a-real-token", "Token", "Token a b", "Bearer something", "Token \u00e9\u00e8"],
)
def test_bad_credentials_get_401(reference, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(f"{API}/features/")
    assert_error_body(response, 401)


def test_a_revoked_token_stops_working_at_once(world, client_for, users):
    client = client_for("alice")
    assert client.get(f"{API}/features/").status_code == 200
    ApiToken.objects.filter(user=users["alice"]).update(revoked_at=timezone.now())
    assert_error_body(client.get(f"{API}/features/"), 401)
    assert_error_body(client.post(f"{API}/change-requests/{world['proposed']}/approve/", {}, format="json"), 401)
    assert ChangeRequest.objects.get(pk=world["proposed"]).state == "proposed"


def test_an_expired_token_and_an_inactive_user_get_401(reference, client_for, users):
    client = client_for("erin")
    ApiToken.objects.filter(user=users["erin"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert_error_body(client.get(f"{API}/teams/"), 401)
    other = client_for("carol")
    users["carol"].is_active = False
    users["carol"].save()
    assert_error_body(other.get(f"{API}/teams/"), 401)


def test_token_use_is_recorded(reference, client_for, users):
    client_for("erin").get(f"{API}/teams/")
    assert ApiToken.objects.get(user=users["erin"]).last_used_at is not None


# --- Lists: filters and pagination --------------------------------------------------------------------------------


def count(client: Any, **params: Any) -> int:
    response = client.get(f"{API}/features/", params)
    assert response.status_code == 200, response.content[:300]
    return int(response.json()["count"])


def test_feature_list_filters(loaded, client_for, real_specs):
    client = client_for("erin")
    features = [(s["component"], s["owner"], f) for s in real_specs for f in s["features"]]
    assert count(client) == 932
    assert count(client, environment="dev") == 932
    assert count(client, environment="prod") == 0
    assert count(client, component="c6") == 220
    assert count(client, component="c8", environment="dev") == 48
    assert count(client, online="true") == 32
    assert count(client, online="false") == 900
    assert count(client, owner="team-straddle") == 150
    assert count(client, owner="team-sr-levels") == 130
    assert count(client, status="active") == 932
    assert count(client, status="deprecated") == 0
    for dtype, expected in Counter(f["dtype"] for _, _, f in features).items():
        assert count(client, dtype=dtype) == expected, dtype
    for tag in {t for _, _, f in features for t in f.get("tags", [])}:
        expected = sum(1 for _, _, f in features if tag in f.get("tags", []))
        assert count(client, tag=tag) == expected, tag
    one = real_specs[2]["features"][7]
    assert count(client, name=one["name"]) == 1
    term = "straddle"
    expected = sum(1 for _, _, f in features if any(term in f[k].lower() for k in ("name", "description", "source")))
    assert expected > 0
    assert count(client, search=term) == expected
    assert count(client, search="STRADDLE") == expected
    online_c1 = sum(1 for c, _, f in features if c == "c1" and f.get("online"))
    assert count(client, component="c1", online="true", environment="dev", status="active") == online_c1
    assert count(client, search="no-such-feature-anywhere") == 0


def test_tag_filter_matches_whole_tags_only(world, client_for):
    client = client_for("erin")
    assert count(client, tag="minute") == 3
    assert count(client, tag="minu") == 0


@pytest.mark.parametrize("params", [{"status": "retired"}, {"dtype": "float128"}, {"online": "maybe"}])
def test_invalid_filter_values_are_400(world, client_for, params):
    response = client_for("erin").get(f"{API}/features/", params)
    assert_error_body(response, 400)
    assert [error["path"] for error in response.json()["errors"]] == list(params)


def test_boolean_filters_take_true_false_and_one_zero(world, client_for):
    client = client_for("erin")
    assert count(client, online="1") == count(client, online="true") > 0
    assert count(client, online="0") == count(client, online="false") > 0
    assert_error_body(client.get(f"{API}/change-requests/", {"is_breaking": "sometimes"}), 400)


def test_feature_list_filters_deprecated_features(world, client_for):
    spec = changed_c1("Applied.")
    del spec["features"][2]
    apply_specs([spec])
    client = client_for("erin")
    assert count(client, status="deprecated") == 1
    assert count(client, status="active") == 2


def test_pagination(loaded, client_for):
    client = client_for("erin")
    first = client.get(f"{API}/features/").json()
    assert first["count"] == 932
    assert len(first["results"]) == 50
    assert first["previous"] is None
    assert "page=2" in first["next"]
    sized = client.get(f"{API}/features/", {"page_size": 100, "page": 10}).json()
    assert len(sized["results"]) == 32
    assert sized["next"] is None
    capped = client.get(f"{API}/features/", {"page_size": 5000}).json()
    assert len(capped["results"]) == 500
    names = [f["name"] for page in (1, 2) for f in client.get(f"{API}/features/", {"page": page}).json()["results"]]
    assert len(set(names)) == 100
    assert_error_body(client.get(f"{API}/features/", {"page": 999}), 404)


def test_other_lists_are_paginated_and_filtered(world, client_for):
    client = client_for("carol")
    crs = client.get(f"{API}/change-requests/", {"state": "proposed"}).json()
    assert crs["count"] == 1
    assert crs["results"][0]["id"] == world["proposed"]
    assert client.get(f"{API}/change-requests/", {"author": "dave", "environment": "dev"}).json()["count"] == 2
    runs = client.get(f"{API}/provisioning-runs/", {"environment": "dev", "state": "queued"}).json()
    assert runs["count"] == ProvisioningRun.objects.filter(environment__name="dev", state="queued").count() == 2
    audit = client.get(f"{API}/audit-log/", {"action": "change_request.approve"}).json()
    assert audit["count"] == 1
    assert audit["results"][0]["actor_name"] == "alice"
    assert client.get(f"{API}/audit-log/", {"action_prefix": "feature."}).json()["count"] >= 3


def test_components_count_features_per_environment(loaded, client_for):
    response = client_for("erin").get(f"{API}/components/", {"environment": "dev"})
    counts = {c["key"]: (c["active_features"], c["online_features"]) for c in response.json()["results"]}
    assert {k: v[0] for k, v in counts.items()} == {
        "c1": 150,
        "c2": 98,
        "c3": 105,
        "c4": 87,
        "c5": 94,
        "c6": 220,
        "c7": 130,
        "c8": 48,
    }
    assert sum(v[1] for v in counts.values()) == 32


def test_environment_detail(reference, client_for):
    body = client_for("erin").get(f"{API}/environments/prod/").json()
    assert body["bigquery_dataset"] == "market_regime_prod"
    assert (body["gcp_project"], body["region"], body["breaking_approvals_required"]) == (
        "arched-bot-269016",
        "us-central1",
        2,
    )


def test_team_detail_lists_members_and_components(world, client_for):
    body = client_for("erin").get(f"{API}/teams/team-straddle/").json()
    assert sorted((m["username"], m["role"]) for m in body["members"]) == [("alice", "owner"), ("bob", "member")]
    assert body["components"] == ["c1"]


# --- Feature detail -----------------------------------------------------------------------------------------------


def test_feature_detail_has_versions_and_history(world, client_for):
    client = client_for("erin")
    body = client.get(f"{API}/features/{world['feature']}/").json()
    assert body["name"] == "c1_beta"
    assert body["description"] == "Applied."
    assert body["bigquery_column"] == "arched-bot-269016.market_regime_dev.c1_features.c1_beta"
    assert [(v["version"], v["column_name"], v["dtype"]) for v in body["versions"]] == [(1, "c1_beta", "float64")]
    assert [h["action"] for h in body["history"]] == ["feature.create", "feature.update"]
    assert body["history"][1]["before"]["description"] == "beta of c1."
    assert body["history"][1]["after"]["description"] == "Applied."

    spec = changed_c1("Applied.")
    spec["features"][1]["dtype"] = "string"
    cr = (
        client_for("dave")
        .post(f"{API}/change-requests/", {"environment": "dev", "specs": [spec]}, format="json")
        .json()
    )
    client_for("bob").post(f"{API}/change-requests/{cr['change_request']['id']}/approve/", {}, format="json")
    body = client.get(f"{API}/features/{world['feature']}/").json()
    assert [(v["version"], v["column_name"], v["dtype"]) for v in body["versions"]] == [
        (1, "c1_beta", "float64"),
        (2, "c1_beta__v2", "string"),
    ]
    assert body["versions"][1]["created_by"] == "bob"
    assert body["versions"][1]["change_request"] == cr["change_request"]["id"]
    assert len(body["history"]) == 3


def test_unknown_feature_is_404_with_the_common_body(reference, client_for):
    body = assert_error_body(client_for("erin").get(f"{API}/features/999999/"), 404)
    assert body["code"] == "not_found"


# --- Change request detail ----------------------------------------------------------------------------------------


def test_change_request_detail_says_what_the_reader_may_do(world, client_for):
    url = f"{API}/change-requests/{world['proposed']}/"
    as_bob = client_for("bob").get(url).json()
    assert as_bob["review"]["can_review"] is True
    # Not breaking: nothing may say it is.
    assert as_bob["review"]["missing"] == ["an approval", "an approval from a member of team-straddle (owns c1)"]
    assert as_bob["plan"]["summary"]["update"] == 1
    as_dave = client_for("dave").get(url).json()
    assert as_dave["review"]["can_review"] is False
    assert "author" in as_dave["review"]["reason"]


def test_submit_response_has_the_plan_and_its_text(world, client_for):
    response = client_for("bob").post(
        f"{API}/change-requests/",
        {"environment": "dev", "title": "  Bob's  ", "specs": [changed_c1("Bob.")]},
        format="json",
    )
    body = response.json()
    assert response.status_code == 201
    assert body["change_request"]["title"] == "Bob's"
    assert body["change_request"]["author"] == "bob"
    assert body["plan"]["changes"][0]["fields"] == [{"field": "description", "old": "Applied.", "new": "Bob."}]
    assert '      description: "Applied." -> "Bob."' in body["text"].splitlines()


# --- Schema and docs ----------------------------------------------------------------------------------------------


def test_openapi_schema_loads(reference, client_for):
    response = client_for("erin").get("/api/schema/")
    assert response.status_code == 200
    text = response.content.decode()
    assert "openapi: 3" in text
    for path in (
        "/api/v1/features/",
        "/api/v1/change-requests/{id}/approve/",
        "/api/v1/change-requests/plan/",
        "/api/v1/audit-log/",
    ):
        assert path in text
    as_json = client_for("erin").get("/api/schema/", {"format": "json"})
    assert as_json.status_code == 200
    assert as_json.json()["info"]["title"] == "Feature Catalog Console API"
    # Every operation documents the answers any request can get: 406 and 503 with Retry-After.
    operations = [op for path in as_json.json()["paths"].values() for op in path.values()]
    assert len(operations) > 30
    for operation in operations:
        assert {"401", "403", "406", "503"} <= set(operation["responses"]), operation["operationId"]
        assert "Retry-After" in operation["responses"]["503"]["headers"]


def test_an_accept_header_without_json_gets_the_documented_406(reference, client_for):
    response = client_for("erin").get(f"{API}/environments/", HTTP_ACCEPT="text/csv")
    assert response.status_code == 406
    assert_error_body(response, 406)


def test_interactive_docs_for_a_signed_in_user(reference, users):
    client = APIClient()
    client.force_login(users["erin"])
    response = client.get("/api/docs/")
    assert response.status_code == 200
    assert b"swagger" in response.content.lower()


# --- One error body -----------------------------------------------------------------------------------------------


def test_every_error_has_the_same_body_shape(world, client_for):
    dave = client_for("dave")
    bad_spec = mini_spec()
    bad_spec["features"][0]["name"] = "select"
    bad = assert_error_body(
        dave.post(f"{API}/change-requests/plan/", {"environment": "dev", "specs": [bad_spec]}, format="json"), 400
    )
    assert bad["errors"] == [
        {
            "path": "specs[0].features[0].name",
            "rule": "reserved_word",
            "detail": "name 'select' is a BigQuery reserved word",
        }
    ]
    missing = assert_error_body(dave.post(f"{API}/change-requests/", {"specs": [mini_spec()]}, format="json"), 400)
    assert [e["path"] for e in missing["errors"]] == ["environment"]
    unknown_env = assert_error_body(
        dave.post(f"{API}/change-requests/plan/", {"environment": "qa", "specs": []}, format="json"), 400
    )
    assert unknown_env["errors"][0]["path"] == "environment"
    assert_error_body(APIClient().get(f"{API}/teams/"), 401)
    forbidden = assert_error_body(
        client_for("erin").post(
            f"{API}/change-requests/", {"environment": "dev", "specs": [mini_spec()]}, format="json"
        ),
        403,
    )
    assert forbidden["code"] == "permission_denied"
    assert_error_body(dave.get(f"{API}/change-requests/999999/"), 404)
    assert_error_body(dave.post(f"{API}/change-requests/999999/approve/", {}, format="json"), 404)
    assert_error_body(dave.get(f"{API}/teams/no-such-team/"), 404)
    client_for("carol").post(f"{API}/change-requests/{world['proposed']}/approve/", {}, format="json")
    conflict = assert_error_body(
        client_for("carol").post(f"{API}/change-requests/{world['proposed']}/approve/", {}, format="json"), 409
    )
    assert conflict["code"] == "conflict"
    assert_error_body(dave.get(f"{API}/change-requests/{world['proposed']}/approve/"), 405)
    assert_error_body(dave.delete(f"{API}/features/{world['feature']}/"), 405)
    malformed = dave.generic("POST", f"{API}/change-requests/plan/", "{not json", content_type="application/json")
    assert assert_error_body(malformed, 400)["code"] == "parse_error"


def test_refused_submit_is_audited(world, client_for):
    assert (
        client_for("gina")
        .post(f"{API}/change-requests/", {"environment": "dev", "specs": [changed_c1()]}, format="json")
        .status_code
        == 403
    )
    entry = AuditLogEntry.objects.get(action="change_request.submit.refused")
    assert entry.actor_name == "gina"
    assert "c1" in entry.after["reason"]


def test_list_endpoints_do_not_leak_token_digests(world, client_for):
    text = client_for("root").get(f"{API}/audit-log/", {"page_size": 500}).content.decode()
    for token in ApiToken.objects.all():
        assert token.digest not in text


def test_json_bodies_keep_unicode(world, client_for):
    spec = copy.deepcopy(changed_c1("Δ of the straddle — 📈"))
    response = client_for("dave").post(
        f"{API}/change-requests/plan/", {"environment": "dev", "specs": [spec]}, format="json"
    )
    assert response.json()["plan"]["changes"][0]["fields"][0]["new"] == "Δ of the straddle — 📈"


def test_issued_tokens_never_start_with_a_dash(users):
    """`fcc --token -abc` would read the token as an option: one secret in 64 used to start with a dash."""
    secrets = [ApiToken.issue(user=users["dave"], name=f"t{i}")[1] for i in range(300)]
    assert not [s for s in secrets if s.startswith("-")]
