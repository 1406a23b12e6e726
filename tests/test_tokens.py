import pytest

from catalog.models import AuditLogEntry

pytestmark = pytest.mark.django_db


def test_tokens_are_issued_listed_and_revoked_at_once(users, client_for):
    dave = client_for("dave")
    issued = dave.post("/api/v1/tokens/", {"name": "ci-main", "expires_in_days": 30}, format="json")
    assert issued.status_code == 201, issued.json()
    secret = issued.json()["secret"]
    listed = dave.get("/api/v1/tokens/").json()["results"]
    assert {t["name"] for t in listed} >= {"ci-main"}
    assert all("secret" not in t for t in listed)  # the secret is never shown again
    assert all(t["user"] == "dave" for t in listed)
    assert {t["user"] for t in client_for("root").get("/api/v1/tokens/").json()["results"]} >= {"dave", "root"}

    fresh = client_for(None)
    fresh.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    assert fresh.get("/api/v1/environments/").status_code == 200
    assert dave.post(f"/api/v1/tokens/{issued.json()['id']}/revoke/").status_code == 200
    assert fresh.get("/api/v1/environments/").status_code == 401
    assert dave.post(f"/api/v1/tokens/{issued.json()['id']}/revoke/").status_code == 409
    assert client_for("erin").post(f"/api/v1/tokens/{issued.json()['id']}/revoke/").status_code == 404  # not hers
    actions = set(AuditLogEntry.objects.filter(object_type="api_token").values_list("action", flat=True))
    assert {"api_token.issue", "api_token.revoke"} <= actions
