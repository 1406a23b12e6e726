"""Concurrent approvals of conflicting change requests never both succeed: real threads, real PostgreSQL
transactions and row locks. SQLite serialises writers on a file lock, which tests nothing here."""

import threading
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, transaction

from api.models import ApiToken
from catalog.audit import audit_chain_verify
from catalog.errors import Conflict
from catalog.models import AppliedRevision, AuditLogEntry, ChangeRequest, Environment, Feature
from catalog.services import change_request_approve, change_request_plan, change_request_submit, plan_apply
from provisioning.models import ProvisioningRun
from tests.conftest import mini_spec

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason="needs PostgreSQL: concurrent transactions with row locks (SQLite serialises all writers)",
    ),
]

CONTENDERS = 20


def apply_specs(specs: list[dict[str, Any]], environment: str = "dev") -> int:
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(name=environment)
        result = change_request_plan(environment=env, payload={"specs": specs})
        return plan_apply(
            environment=env, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None
        )


@pytest.fixture
def contenders(users) -> dict[int, str]:
    """c1 in dev, and CONTENDERS change requests against the same revision, each giving c1_beta its own text."""
    apply_specs([mini_spec()])
    texts = {}
    for i in range(CONTENDERS):
        spec = mini_spec()
        spec["features"][1]["description"] = f"Contender {i:02d}."
        result = change_request_submit(
            user=users["dave"], environment_name="dev", title=f"contender {i}", payload={"specs": [spec]}
        )
        texts[result.change_request.pk] = f"Contender {i:02d}."
    assert set(ChangeRequest.objects.values_list("base_revision", flat=True)) == {1}
    return texts


def _race(work: Any, ids: list[int]) -> list[tuple[int, str, Any]]:
    """Runs work(id) for every id in its own thread, all released at once; each closes its connection."""
    barrier = threading.Barrier(len(ids))
    results: list[tuple[int, str, Any]] = []
    lock = threading.Lock()

    def run(cr_id: int) -> None:
        try:
            prepared = work(cr_id, barrier)
            with lock:
                results.append((cr_id, "ok", prepared))
        except Conflict as error:
            with lock:
                results.append((cr_id, "conflict", error))
        except Exception as error:  # noqa: BLE001 - any other outcome is a failure the test reports
            with lock:
                results.append((cr_id, "error", repr(error)))
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(cr_id,)) for cr_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread is stuck: deadlock?"
    return results


def _assert_one_winner(outcomes: Counter, contenders: dict[int, str], winners: list[int]) -> None:
    assert outcomes == Counter({"ok": 1, "conflict": CONTENDERS - 1})
    (winner,) = winners
    assert Environment.objects.get(name="dev").revision == 2
    assert list(
        AppliedRevision.objects.filter(environment__name="dev").values_list("revision", "change_request_id")
    ) == [
        (2, winner),
        (1, None),
    ]
    assert Feature.objects.get(environment__name="dev", name="c1_beta").description == contenders[winner]
    assert list(
        ProvisioningRun.objects.filter(change_request__isnull=False).values_list("change_request_id", "revision")
    ) == [(winner, 2)]
    states = Counter(ChangeRequest.objects.values_list("state", flat=True))
    assert states == Counter({"approved": 1, "proposed": CONTENDERS - 1})
    assert AuditLogEntry.objects.filter(action="change_request.approved").count() == 1
    assert AuditLogEntry.objects.filter(action="change_request.approve.refused").count() == CONTENDERS - 1
    # Every writer, winner and refused alike, appended to one unbroken chain.
    assert audit_chain_verify()[1] == []


def test_concurrent_approvals_through_the_service(contenders, monkeypatch):
    from workers import tasks

    enqueued: list[int] = []
    monkeypatch.setattr(tasks.provisioning_run_execute, "delay", lambda run_id: enqueued.append(run_id))

    def approve(cr_id: int, barrier: threading.Barrier) -> Any:
        alice = get_user_model().objects.get(username="alice")
        barrier.wait(timeout=60)
        cr, missing = change_request_approve(user=alice, change_request_id=cr_id, comment="race")
        return cr.state, missing

    results = _race(approve, list(contenders))
    errors = [r for r in results if r[1] == "error"]
    assert errors == []
    winners = [cr_id for cr_id, outcome, _ in results if outcome == "ok"]
    assert [value for _, outcome, value in results if outcome == "ok"] == [("approved", [])]
    for _, outcome, error in results:
        if outcome == "conflict":
            assert error.status == 409
            assert "re-plan" in error.message
    _assert_one_winner(Counter(outcome for _, outcome, _ in results), contenders, winners)
    assert enqueued == [ProvisioningRun.objects.get(change_request_id=winners[0]).pk]


def test_concurrent_approvals_over_http(contenders, live_server, users):
    import requests

    _, secret = ApiToken.issue(user=users["bob"], name="race")
    # Connection: close, so each server thread finishes (and closes its database connection) after its response.
    headers = {"Authorization": f"Token {secret}", "Connection": "close"}

    def approve(cr_id: int, barrier: threading.Barrier) -> Any:
        url = f"{live_server.url}/api/v1/change-requests/{cr_id}/approve/"
        barrier.wait(timeout=60)
        with requests.post(url, json={}, headers=headers, timeout=60) as response:
            status, body = response.status_code, response.json()
        if status == 409:
            assert body["code"] == "conflict"
            raise Conflict(body["message"])
        assert status == 200, body
        return body["change_request"]["state"]

    results = _race(approve, list(contenders))
    assert [r for r in results if r[1] == "error"] == []
    winners = [cr_id for cr_id, outcome, _ in results if outcome == "ok"]
    assert [value for _, outcome, value in results if outcome == "ok"] == ["approved"]
    _assert_one_winner(Counter(outcome for _, outcome, _ in results), contenders, winners)
