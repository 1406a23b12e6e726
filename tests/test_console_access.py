"""Who may do what in the console's pages, as tests/test_api.py's role x action matrix does for the API: every
page and every POST action for every persona. Anonymous requests go to the sign-in page; a refused action
answers 403, changes nothing and is audited once, naming who, what and why (API and pages alike). Every
console form needs its CSRF token."""

import datetime as dt
import re
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from catalog.models import Approval, AuditLogEntry, ChangeRequest, Environment
from provisioning.models import Backfill, DriftReport, ProvisioningRun, TrainingDataset
from tests.test_api import API, PERSONAS, WRITES, _write, world  # noqa: F401 - world is a fixture
from tests.test_backfill import write_source

pytestmark = pytest.mark.django_db

REFUSALS = "refusals"


@pytest.fixture
def site(world, users, isolated_stores, tmp_path, monkeypatch) -> dict[str, Any]:  # noqa: F811
    """test_api's world (c1 in dev, a proposed and an applied change request), plus a failed run, a pending
    backfill requested by alice, Parquet files for c1 that pass the backfill's checks, and two training datasets
    requested by alice: one queued, one succeeded with its result file."""
    from workers import tasks

    monkeypatch.setattr(tasks.provisioning_run_execute, "delay", lambda *a, **k: None)
    monkeypatch.setattr(tasks.backfill_execute_task, "delay", lambda *a, **k: None)
    dev = Environment.objects.get(name="dev")
    failed = ProvisioningRun.objects.filter(environment=dev).order_by("-id").first()
    ProvisioningRun.objects.filter(pk=failed.pk).update(state="failed", error="the dataset is read-only")
    backfill = Backfill.objects.create(
        environment=dev, components=["c1"], source="/data/parquet", reason="requested", requested_by=users["alice"]
    )
    source = tmp_path / "parquet"
    write_source(source, component="c1", days=[dt.date(2026, 11, 23)], assets=("NIFTY",))
    queued = TrainingDataset.objects.create(
        environment=dev, requested_by=users["alice"], entity_file=str(tmp_path / "entities.csv"), entity_rows=1
    )
    result = tmp_path / "training-result.parquet"
    result.write_bytes(b"PAR1 stands in for a result PAR1")
    succeeded = TrainingDataset.objects.create(
        environment=dev,
        requested_by=users["alice"],
        entity_file=str(tmp_path / "entities.csv"),
        entity_rows=1,
        state=TrainingDataset.State.SUCCEEDED,
        result_path=str(result),
        result_rows=1,
        result_bytes=result.stat().st_size,
    )
    return {
        **world,
        "failed_run": failed.pk,
        "backfill": backfill.pk,
        "source": str(source),
        "training_dataset": queued.pk,
        "training_result": succeeded.pk,
    }


def client_as(users: dict[str, Any], persona: str | None, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    if persona is not None:
        client.force_login(users[persona])
    return client


def _last_audit_id() -> int:
    return AuditLogEntry.objects.order_by("-id").values_list("id", flat=True).first() or 0


def refusal_entries() -> list[AuditLogEntry]:
    return [
        e for e in AuditLogEntry.objects.order_by("id") if e.action.endswith(".refused") or e.action == "access.denied"
    ]


# --- Pages (GET) ----------------------------------------------------------------------------------------------------

PAGES = [
    "/",
    "/features/",
    "/features/dev/c1_beta/",
    "/components/",
    "/components/c1/",
    "/teams/",
    "/teams/team-straddle/",
    "/change-requests/",
    "/change-requests/{proposed}/",
    "/runs/",
    "/runs/{failed_run}/",
    "/runs/{failed_run}/progress/",
    "/backfills/",
    "/backfills/{backfill}/",
    "/backfills/{backfill}/progress/",
    "/training-datasets/",
    "/training-datasets/{training_dataset}/",
    "/training-datasets/{training_dataset}/progress/",
    "/training-datasets/{training_result}/",
    "/training-datasets/{training_result}/progress/",
    "/lineage/",
    "/costs/",
    "/drift/",
]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_needs_a_sign_in_and_is_readable_by_every_persona(site, users, page):
    url = page.format(**site)
    before = AuditLogEntry.objects.count()
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/?next=")
    # Anonymous page views are not audited (they name nobody and would flood the chain).
    assert AuditLogEntry.objects.count() == before
    for persona in PERSONAS[1:]:
        response = client_as(users, persona).get(url)
        # 286: a finished run's, backfill's or training dataset's progress fragment tells htmx to stop polling.
        assert response.status_code in (200, 286), (persona, url, response.status_code)


# Files sent as downloads: pages too, but their body is the file (no forms in it to check).
DOWNLOADS = ["/training-datasets/{training_result}/result/"]


@pytest.mark.parametrize("download", DOWNLOADS)
def test_every_download_needs_a_sign_in_and_is_readable_by_every_persona(site, users, download):
    url = download.format(**site)
    anonymous = Client().get(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/?next=")
    for persona in PERSONAS[1:]:
        response = client_as(users, persona).get(url)
        assert response.status_code == 200, (persona, url, response.status_code)
        assert response.getvalue() == b"PAR1 stands in for a result PAR1"


# --- Actions (POST) -------------------------------------------------------------------------------------------------


def _action(name: str, site: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    if name == "approve":
        return f"/change-requests/{site['proposed']}/approve/", {"comment": "ok"}
    if name == "reject":
        return f"/change-requests/{site['proposed']}/reject/", {"comment": "no"}
    if name == "replan":
        return f"/change-requests/{site['proposed']}/replan/", {}
    if name == "promote":
        return f"/change-requests/{site['applied']}/promote/", {"environment": "staging"}
    if name == "backfill_start":
        return "/backfills/start/", {"environment": "dev", "source": site["source"], "components": ["c1"]}
    if name == "backfill_cancel":
        return f"/backfills/{site['backfill']}/cancel/", {}
    if name == "run_retry":
        return f"/runs/{site['failed_run']}/retry/", {}
    if name == "drift_run":
        return "/drift/dev/run/", {}
    if name == "training_dataset_request":
        entities = SimpleUploadedFile("entities.csv", b"symbol,dte,event_timestamp\nNIFTY,3,2026-11-23T04:00:17Z\n")
        return "/training-datasets/request/", {"environment": "dev", "entities": entities, "components": ["c1"]}
    raise AssertionError(name)


def _effect(name: str, site: dict[str, Any], persona: str) -> bool:
    """Whether the action took effect (for an allowed persona), read from the database."""
    if name == "approve":
        return Approval.objects.filter(change_request_id=site["proposed"], user__username=persona).exists()
    if name == "reject":
        return ChangeRequest.objects.get(pk=site["proposed"]).state == "rejected"
    if name == "replan":
        return AuditLogEntry.objects.filter(action="change_request.replan", actor_name=persona).exists()
    if name == "promote":
        return ChangeRequest.objects.filter(promoted_from_id=site["applied"]).exists()
    if name == "backfill_start":
        return Backfill.objects.filter(requested_by__username=persona).exists()
    if name == "backfill_cancel":
        return Backfill.objects.get(pk=site["backfill"]).state == "cancelled"
    if name == "run_retry":
        return ProvisioningRun.objects.get(pk=site["failed_run"]).state == "queued"
    if name == "drift_run":
        return DriftReport.objects.filter(environment__name="dev").exists()
    if name == "training_dataset_request":
        # Read from the audit trail: the site's own datasets were requested by alice without one.
        return AuditLogEntry.objects.filter(action="training_dataset.request", actor_name=persona).exists()
    raise AssertionError(name)


#                          anonymous erin dave carol bob  alice root gina   (302: done; 403: refused)
PAGE_ACTIONS = {
    "approve": (None, 403, 403, 302, 302, 302, 302, 403),
    "reject": (None, 403, 403, 302, 302, 302, 302, 403),
    "replan": (None, 403, 302, 403, 302, 302, 302, 403),
    "promote": (None, 403, 302, 403, 302, 302, 302, 403),
    "backfill_start": (None, 403, 403, 302, 302, 302, 302, 403),
    "backfill_cancel": (None, 403, 403, 302, 403, 302, 302, 403),
    "run_retry": (None, 403, 403, 302, 403, 403, 302, 403),
    "drift_run": (None, 302, 302, 302, 302, 302, 302, 302),
    # As the API: any signed-in user may request a training dataset.
    "training_dataset_request": (None, 302, 302, 302, 302, 302, 302, 302),
}
PAGE_MATRIX = [
    pytest.param(action, persona, status, id=f"{action}-{persona or 'anonymous'}")
    for action, statuses in PAGE_ACTIONS.items()
    for persona, status in zip(PERSONAS, statuses, strict=True)
]


@pytest.mark.parametrize(("action", "persona", "status"), PAGE_MATRIX)
def test_page_action_matrix(site, users, action, persona, status):
    url, data = _action(action, site)
    last = _last_audit_id()
    response = client_as(users, persona).post(url, data)
    if persona is None:
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/?next=")
        assert _last_audit_id() == last  # logged, not audited: it names nobody
        assert not _effect(action, site, "anonymous")
        return
    assert response.status_code == status, (response.status_code, response.content[:400])
    new = [e for e in refusal_entries() if e.pk > last]
    if status == 403:
        assert not _effect(action, site, persona)
        assert len(new) == 1, [(e.action, e.actor_name) for e in new]
        entry = new[0]
        assert entry.actor_name == persona
        assert entry.after["reason"]
        assert entry.after["reason"] in response.content.decode()  # the person reads why
    else:
        assert new == []
        assert _effect(action, site, persona), action


def test_a_refusal_no_service_audited_is_audited_once_as_access_denied(site, users, monkeypatch):
    """The generic path: a view's own PermissionDenied (not a service's) is recorded as access.denied."""
    from catalog.views import provisioning as views

    def refuse(**_: Any) -> None:
        raise DjangoPermissionDenied("drift checks are paused during the store migration")

    monkeypatch.setattr(views, "drift_detect", refuse)
    response = client_as(users, "erin").post("/drift/dev/run/")
    assert response.status_code == 403
    assert "paused during the store migration" in response.content.decode()
    entry = AuditLogEntry.objects.get(action="access.denied")
    assert entry.actor_name == "erin"
    assert entry.after == {
        "method": "POST",
        "path": "/drift/dev/run/",
        "status": 403,
        "reason": "drift checks are paused during the store migration",
    }


# --- The API: every refused write is audited once --------------------------------------------------------------------

API_EXTRA = {
    #              anonymous erin dave carol bob  alice root gina
    "retry": (401, 403, 403, 202, 403, 403, 202, 403),
    "backfill_cancel": (401, 403, 403, 200, 403, 200, 200, 403),
}
API_MATRIX = [
    pytest.param(action, persona, status, id=f"{action}-{persona or 'anonymous'}")
    for action, statuses in [*WRITES.items(), *API_EXTRA.items()]
    for persona, status in zip(PERSONAS, statuses, strict=True)
]


@pytest.mark.parametrize(("action", "persona", "status"), API_MATRIX)
def test_every_refused_api_write_is_audited_once(site, client_for, action, persona, status):
    body: dict[str, Any]
    if action == "retry":
        path, body = f"/provisioning-runs/{site['failed_run']}/retry/", {}
    elif action == "backfill_cancel":
        path, body = f"/backfills/{site['backfill']}/cancel/", {}
    else:
        path, body = _write(action, site)
    last = _last_audit_id()
    response = client_for(persona).post(API + path, body, format="json")
    assert response.status_code == status, (response.status_code, response.content[:300])
    refusals = [e for e in refusal_entries() if e.pk > last]
    if status == 403:
        assert len(refusals) == 1, [(e.action, e.actor_name) for e in refusals]
        assert refusals[0].actor_name == persona
        assert refusals[0].after["reason"] == response.json()["message"]
    else:
        # 401 (anonymous) is logged, not audited; allowed writes record no refusal.
        assert refusals == []


def test_the_api_audits_a_refusal_no_service_audited(site, client_for, monkeypatch):
    from api import views_provisioning

    def refuse(**_: Any) -> None:
        raise DjangoPermissionDenied("paused")

    monkeypatch.setattr(views_provisioning, "drift_detect", refuse)
    response = client_for("carol").post(f"{API}/environments/dev/drift/")
    assert response.status_code == 403
    entry = AuditLogEntry.objects.get(action="access.denied")
    assert entry.actor_name == "carol"
    assert entry.after["path"] == f"{API}/environments/dev/drift/"
    assert entry.after["status"] == 403


# --- CSRF ------------------------------------------------------------------------------------------------------------

FORMS = [
    "approve",
    "reject",
    "replan",
    "promote",
    "backfill_start",
    "backfill_cancel",
    "run_retry",
    "drift_run",
    "training_dataset_request",
]


@pytest.mark.parametrize("action", FORMS)
def test_every_console_form_needs_its_csrf_token(site, users, action):
    url, data = _action(action, site)
    before = AuditLogEntry.objects.count()
    response = client_as(users, "root", csrf=True).post(url, data)
    assert response.status_code == 403
    assert not _effect(action, site, "root")
    assert AuditLogEntry.objects.count() == before


def test_sign_in_and_sign_out_need_their_csrf_token(site, users):
    login = Client(enforce_csrf_checks=True).post("/accounts/login/", {"username": "erin", "password": "pw-erin"})
    assert login.status_code == 403
    client = client_as(users, "erin", csrf=True)
    assert client.post("/accounts/logout/").status_code == 403
    assert client.get("/features/").status_code == 200  # still signed in


def test_every_form_on_every_page_carries_a_csrf_token(site, users):
    client = client_as(users, "root")
    pages = [p.format(**site) for p in PAGES] + ["/change-requests/{applied}/".format(**site)]
    forms_seen = 0
    for url in pages:
        body = client.get(url).content.decode()
        for form in re.findall(r"<form\b[^>]*>.*?</form>", body, flags=re.S | re.I):
            if re.search(r'method="post"', form, flags=re.I):
                forms_seen += 1
                assert 'name="csrfmiddlewaretoken"' in form, (url, form[:200])
    assert forms_seen >= len(pages)  # at least the sign-out form on each page


# --- Retry from the run page ----------------------------------------------------------------------------------------


def test_a_failed_run_can_be_retried_from_its_page(site, users, monkeypatch, django_capture_on_commit_callbacks):
    from workers import tasks

    sent: list[Any] = []
    monkeypatch.setattr(tasks.provisioning_run_execute, "delay", lambda *a, **k: sent.append(a))
    run_id = site["failed_run"]
    form = f'action="/runs/{run_id}/retry/"'
    assert form in client_as(users, "carol").get(f"/runs/{run_id}/").content.decode()
    assert form not in client_as(users, "erin").get(f"/runs/{run_id}/").content.decode()
    assert form not in client_as(users, "alice").get(f"/runs/{run_id}/").content.decode()

    with django_capture_on_commit_callbacks(execute=True):
        response = client_as(users, "carol").post(f"/runs/{run_id}/retry/", follow=True)
    assert response.status_code == 200
    assert any("queued again" in str(m) for m in response.context["messages"])
    assert ProvisioningRun.objects.get(pk=run_id).state == "queued"
    assert sent == [(run_id,)]
    entry = AuditLogEntry.objects.get(action="provisioning_run.retry")
    assert (entry.actor_name, entry.before, entry.after) == ("carol", {"state": "failed"}, {"state": "queued"})
    # The button is gone once the run is queued; a second retry is a conflict, shown as a message.
    assert form not in client_as(users, "carol").get(f"/runs/{run_id}/").content.decode()
    again = client_as(users, "carol").post(f"/runs/{run_id}/retry/", follow=True)
    assert any("only failed runs can be retried" in str(m) for m in again.context["messages"])
    assert client_as(users, "carol").post("/runs/99999/retry/").status_code == 404
    assert client_as(users, "carol").get(f"/runs/{run_id}/retry/").status_code == 405
