"""The audit log is append-only: not through the ORM, not through the API or the admin, and on PostgreSQL not
even through raw SQL; its hash chain shows an edit made behind the application's back."""

import itertools
from typing import Any

import pytest
from django.db import DatabaseError, connection, transaction

from catalog.audit import audit_chain_verify, audit_log_write
from catalog.models import AuditLogEntry, FeatureVersion
from tests.conftest import mini_spec

pytestmark = pytest.mark.django_db

API = "/api/v1"
only_sqlite = pytest.mark.skipif(
    connection.vendor != "sqlite", reason="PostgreSQL refuses the edit itself (trigger); detection is tested on SQLite"
)
only_postgres = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the append-only trigger exists on PostgreSQL only"
)


@pytest.fixture
def history(reference, client_for) -> list[AuditLogEntry]:
    """A short real history through the API: a submission, a refused and a granted approval, feature writes."""
    dave = client_for("dave")
    first = dave.post(
        f"{API}/change-requests/", {"environment": "dev", "title": "c1", "specs": [mini_spec()]}, format="json"
    )
    cr_id = first.json()["change_request"]["id"]
    assert client_for("erin").post(f"{API}/change-requests/{cr_id}/approve/", {}, format="json").status_code == 403
    assert client_for("alice").post(f"{API}/change-requests/{cr_id}/approve/", {}, format="json").status_code == 200
    entries = list(AuditLogEntry.objects.order_by("id"))
    assert len(entries) >= 8
    return entries


def test_history_records_who_what_before_and_after(history):
    actions = [e.action for e in history]
    assert actions[:3] == ["change_request.submit", "change_request.approve.refused", "change_request.approve"]
    assert actions.count("feature.create") == 3
    assert "environment.revision" in actions
    assert actions[-1] == "change_request.approved"
    approved = history[-1]
    assert approved.actor_name == "alice"
    assert approved.actor.username == "alice"
    assert (approved.before["state"], approved.after["state"]) == ("proposed", "approved")
    revision = next(e for e in history if e.action == "environment.revision")
    assert (revision.before, revision.after["revision"]) == ({"revision": 0}, 1)
    # Written by API requests: each entry carries the request's id for the logs.
    assert all(e.request_id for e in history)


def test_entries_cannot_be_changed_or_deleted_through_the_orm(history):
    entry = AuditLogEntry.objects.order_by("id").first()
    entry.action = "change_request.nothing_happened"
    with pytest.raises(TypeError):
        entry.save()
    with pytest.raises(TypeError):
        entry.delete()
    with pytest.raises(TypeError):
        AuditLogEntry.objects.update(action="rewritten")
    with pytest.raises(TypeError):
        AuditLogEntry.objects.filter(pk=entry.pk).update(after={"forged": True})
    with pytest.raises(TypeError):
        AuditLogEntry.objects.filter(pk=entry.pk).delete()
    with pytest.raises(TypeError):
        AuditLogEntry.objects.all().delete()
    # bulk_update runs in an atomic block without a savepoint: give it one so the test can go on.
    with pytest.raises(TypeError), transaction.atomic():
        AuditLogEntry.objects.bulk_update([entry], ["action"])
    assert AuditLogEntry.objects.get(pk=entry.pk).action == "change_request.submit"
    assert AuditLogEntry.objects.count() == len(history)
    assert audit_chain_verify() == (len(history), [])


def test_feature_versions_are_immutable_too(history):
    version = FeatureVersion.objects.first()
    version.dtype = "string"
    with pytest.raises(TypeError):
        version.save()
    with pytest.raises(TypeError):
        FeatureVersion.objects.filter(pk=version.pk).update(dtype="string")
    with pytest.raises(TypeError):
        version.delete()


def _raw(sql: str, params: list[Any]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@only_postgres
@pytest.mark.postgres
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE catalog_auditlogentry SET action = 'rewritten' WHERE id = %s",
        "DELETE FROM catalog_auditlogentry WHERE id = %s",
    ],
)
def test_postgres_refuses_raw_sql_edits(history, sql):
    entry = history[0]
    with pytest.raises(DatabaseError, match="append-only"):
        _raw(sql, [entry.pk])
    assert AuditLogEntry.objects.get(pk=entry.pk).action == "change_request.submit"
    assert audit_chain_verify() == (len(history), [])


@only_postgres
@pytest.mark.postgres
def test_postgres_refuses_raw_sql_edits_of_feature_versions(history):
    version = FeatureVersion.objects.first()
    with pytest.raises(DatabaseError, match="append-only"):
        _raw("UPDATE catalog_featureversion SET dtype = 'string' WHERE id = %s", [version.pk])
    with pytest.raises(DatabaseError, match="append-only"):
        _raw("DELETE FROM catalog_featureversion WHERE id = %s", [version.pk])


def test_the_chain_verifies(history):
    checked, problems = audit_chain_verify()
    assert (checked, problems) == (len(history), [])
    assert history[0].prev_hash == "0" * 64
    assert all(later.prev_hash == earlier.entry_hash for earlier, later in itertools.pairwise(history))


@only_sqlite
def test_the_chain_detects_an_edit_made_with_raw_sql(history):
    target = history[2]
    _raw("UPDATE catalog_auditlogentry SET after = %s WHERE id = %s", ['{"approval": 999}', target.pk])
    checked, problems = audit_chain_verify()
    assert checked == len(history)
    assert problems == [f"entry {target.pk}: its content does not match its hash (edited)"]


@only_sqlite
def test_the_chain_detects_a_rehashed_edit(history):
    """Recomputing the edited entry's own hash does not help: the next entry still points at the old one."""
    target = history[2]
    target.actor_name = "mallory"
    forged = target.compute_hash()
    _raw(
        "UPDATE catalog_auditlogentry SET actor_name = %s, entry_hash = %s WHERE id = %s",
        ["mallory", forged, target.pk],
    )
    _, problems = audit_chain_verify()
    assert problems == [f"entry {history[3].pk}: prev_hash does not match the entry before it"]


@only_sqlite
def test_the_chain_detects_deleted_entries(history):
    _raw("DELETE FROM catalog_auditlogentry WHERE id = %s", [history[1].pk])
    assert audit_chain_verify()[1] == [f"entry {history[2].pk}: prev_hash does not match the entry before it"]


@only_sqlite
def test_the_chain_detects_entries_deleted_at_the_end(history):
    _raw("DELETE FROM catalog_auditlogentry WHERE id = %s", [history[-1].pk])
    assert audit_chain_verify()[1] == ["the newest entry is not the chain's head (entries deleted at the end)"]


@pytest.mark.django_db(transaction=True)
def test_audit_writes_must_be_part_of_the_transaction_they_record(reference):
    with pytest.raises(RuntimeError):
        audit_log_write(actor=None, action="x.y", object_type="y", object_id=1)
    assert not AuditLogEntry.objects.filter(action="x.y").exists()


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_audit_api_cannot_write(history, client_for, method):
    client = client_for("root")
    entry = history[0]
    for url in (f"{API}/audit-log/", f"{API}/audit-log/{entry.pk}/"):
        response = getattr(client, method)(url, {"action": "forged"}, format="json")
        assert response.status_code == 405, (method, url, response.status_code)
        assert response.json()["code"] == "method_not_allowed"
    assert AuditLogEntry.objects.count() == len(history)
    assert AuditLogEntry.objects.get(pk=entry.pk).action == "change_request.submit"


def test_the_audit_api_reads(history, client_for):
    body = client_for("erin").get(f"{API}/audit-log/", {"page_size": 100}).json()
    assert body["count"] == len(history)
    newest = body["results"][0]
    assert newest["action"] == "change_request.approved"
    assert newest["entry_hash"] == history[-1].entry_hash
    detail = client_for("erin").get(f"{API}/audit-log/{history[0].pk}/").json()
    assert detail["after"]["state"] == "proposed"


@pytest.fixture
def admin_client(users, client):
    client.force_login(users["root"])
    return client


def test_admin_lists_the_audit_log(history, admin_client):
    response = admin_client.get("/admin/catalog/auditlogentry/")
    assert response.status_code == 200
    assert b"change_request.approved" in response.content
    # No bulk delete action either.
    assert b"delete_selected" not in response.content


def test_admin_cannot_add_change_or_delete_audit_entries(history, admin_client):
    entry = history[0]
    base = "/admin/catalog/auditlogentry/"
    assert admin_client.get(f"{base}add/").status_code == 403
    assert admin_client.post(f"{base}add/", {"action": "forged"}).status_code == 403
    view = admin_client.get(f"{base}{entry.pk}/change/")
    # The change page is a read-only view: no form to save.
    assert view.status_code == 200
    assert view.context["has_change_permission"] is False
    assert b'name="_save"' not in view.content
    assert admin_client.post(f"{base}{entry.pk}/change/", {"action": "forged"}).status_code == 403
    assert admin_client.get(f"{base}{entry.pk}/delete/").status_code == 403
    assert admin_client.post(f"{base}{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    bulk = admin_client.post(base, {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"})
    assert bulk.status_code in (200, 302, 403)
    assert AuditLogEntry.objects.get(pk=entry.pk).action == "change_request.submit"
    assert AuditLogEntry.objects.count() == len(history)


def test_admin_cannot_edit_feature_versions_or_change_requests(history, admin_client):
    for model in ("featureversion", "changerequest", "approval", "appliedrevision", "feature", "environment"):
        assert admin_client.get(f"/admin/catalog/{model}/add/").status_code == 403, model
