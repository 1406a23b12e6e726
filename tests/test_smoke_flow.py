import pytest

from catalog.models import AuditLogEntry, ChangeRequest, Environment
from provisioning.models import ProvisioningRun

pytestmark = pytest.mark.django_db


def test_submit_approve_queues_run(loaded, client_for, specs):
    specs[0]["features"][0]["description"] = "Changed description."
    specs[0]["features"].append(
        {
            "name": "atm_straddle_premium_ema_99",
            "dtype": "float64",
            "description": "New.",
            "ttl": "48h",
            "online": False,
            "source": "component_01.atmStraddlePremiumEma99",
            "tags": ["minute"],
        }
    )
    response = client_for("dave").post(
        "/api/v1/change-requests/", {"environment": "dev", "title": "t", "specs": [specs[0]]}, format="json"
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["plan"]["summary"]["create"] == 1
    assert body["plan"]["summary"]["update"] == 1
    cr_id = body["change_request"]["id"]
    approve = client_for("alice").post(f"/api/v1/change-requests/{cr_id}/approve/", {"comment": "ok"}, format="json")
    assert approve.status_code == 200, approve.json()
    assert approve.json()["change_request"]["state"] == "approved"
    assert Environment.objects.get(name="dev").revision == 2
    assert ProvisioningRun.objects.filter(change_request_id=cr_id, state="queued").count() == 1
    assert AuditLogEntry.objects.filter(action="change_request.approve", object_id=str(cr_id)).exists()
    assert ChangeRequest.objects.get(pk=cr_id).state == "approved"
