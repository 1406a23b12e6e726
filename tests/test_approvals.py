"""Approvals: who may approve, what a change needs before it is applied, no lost updates, rejection, promotion
and supersession. Through the API where a client would go, through the services where the rule lives."""

import copy
from typing import Any

import pytest
from django.db import transaction

from catalog.errors import Conflict, PermissionDenied
from catalog.models import AppliedRevision, Approval, AuditLogEntry, ChangeRequest, Environment, Feature, FeatureVersion
from catalog.services import catalog_load, change_request_approve, change_request_plan, plan_apply
from provisioning.models import ProvisioningRun
from tests.conftest import SPECS_DIR, mini_spec

pytestmark = pytest.mark.django_db

SUBMIT_URL = "/api/v1/change-requests/"


def apply_specs(specs: list[dict[str, Any]], environment: str = "dev") -> int:
    with transaction.atomic():
        env = Environment.objects.select_for_update().get(name=environment)
        result = change_request_plan(environment=env, payload={"specs": specs})
        return plan_apply(
            environment=env, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None
        )


def submit(client: Any, specs: list[dict[str, Any]], environment: str = "dev", **extra: Any) -> int:
    response = client.post(
        SUBMIT_URL, {"environment": environment, "title": "change", "specs": specs, **extra}, format="json"
    )
    assert response.status_code == 201, response.content
    return int(response.json()["change_request"]["id"])


def approve(client: Any, cr_id: int, **body: Any) -> Any:
    return client.post(f"{SUBMIT_URL}{cr_id}/approve/", body, format="json")


def revision(name: str = "dev") -> int:
    return Environment.objects.get(name=name).revision


def refusals(cr_id: int, action: str = "change_request.approve.refused") -> list[AuditLogEntry]:
    return list(AuditLogEntry.objects.filter(action=action, object_id=str(cr_id)).order_by("id"))


@pytest.fixture
def c1(reference) -> dict[str, Any]:
    """c1 applied to dev (revision 1); returns its spec for a test to change."""
    spec = mini_spec()
    apply_specs([spec])
    return spec


def described(spec: dict[str, Any], index: int, text: str) -> dict[str, Any]:
    changed = copy.deepcopy(spec)
    changed["features"][index]["description"] = text
    return changed


# --- Who may approve ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("author", ["alice", "bob", "root"])
def test_the_author_never_approves_whatever_their_role(c1, client_for, users, author):
    cr_id = submit(client_for(author), [described(c1, 1, "Mine.")])
    response = approve(client_for(author), cr_id)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "permission_denied"
    assert "author" in body["message"]
    assert ChangeRequest.objects.get(pk=cr_id).state == "proposed"
    assert revision() == 1
    refused = refusals(cr_id)
    assert len(refused) == 1
    assert refused[0].actor_name == author
    assert "author" in refused[0].after["reason"]
    assert not Approval.objects.filter(change_request_id=cr_id).exists()


def test_a_registrar_never_approves(c1, client_for):
    cr_id = submit(client_for("alice"), [described(c1, 1, "By alice.")])
    response = approve(client_for("dave"), cr_id)
    assert response.status_code == 403
    assert "registrar" in response.json()["message"]
    assert [e.actor_name for e in refusals(cr_id)] == ["dave"]


@pytest.mark.parametrize("who", ["erin", "gina"])
def test_a_viewer_or_another_teams_member_cannot_approve(c1, client_for, who):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Changed.")])
    response = approve(client_for(who), cr_id)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    assert ChangeRequest.objects.get(pk=cr_id).state == "proposed"
    assert [e.actor_name for e in refusals(cr_id)] == [who]


def test_service_refuses_the_author_with_permission_denied(c1, users):
    from catalog.services import change_request_submit

    result = change_request_submit(
        user=users["bob"], environment_name="dev", title="t", payload={"specs": [described(c1, 0, "x")]}
    )
    with pytest.raises(PermissionDenied) as raised:
        change_request_approve(user=users["bob"], change_request_id=result.change_request.pk)
    assert raised.value.status == 403


def test_a_reviewer_alone_is_not_enough_the_owning_team_must_approve(
    c1, client_for, django_capture_on_commit_callbacks, monkeypatch
):
    from workers import tasks

    queued: list[int] = []
    monkeypatch.setattr(tasks.provisioning_run_execute, "delay", lambda run_id: queued.append(run_id))
    spec = described(c1, 1, "Reviewed text.")
    spec["features"].append({**spec["features"][2], "name": "c1_delta", "source": "component_01.delta"})
    cr_id = submit(client_for("dave"), [spec])

    first = approve(client_for("carol"), cr_id, comment="looks fine")
    assert first.status_code == 200, first.content
    assert first.json()["change_request"]["state"] == "proposed"
    assert any("team-straddle" in m for m in first.json()["missing"])
    assert revision() == 1
    assert not ProvisioningRun.objects.filter(change_request_id=cr_id).exists()

    with django_capture_on_commit_callbacks(execute=True):
        second = approve(client_for("bob"), cr_id)
    assert second.status_code == 200, second.content
    assert second.json()["missing"] == []
    assert second.json()["change_request"]["state"] == "approved"
    cr = ChangeRequest.objects.get(pk=cr_id)
    assert (cr.state, cr.applied_revision) == ("approved", 2)
    assert revision() == 2
    assert AppliedRevision.objects.get(environment__name="dev", revision=2).change_request_id == cr_id
    run = ProvisioningRun.objects.get(change_request_id=cr_id)
    assert (run.state, run.revision, run.plan_hash) == ("queued", 2, cr.plan_hash)
    assert run.plan["changes"] == cr.plan["changes"]
    assert queued == [run.pk]
    assert Feature.objects.get(environment__name="dev", name="c1_beta").description == "Reviewed text."
    created = FeatureVersion.objects.get(feature__name="c1_delta", feature__environment__name="dev")
    assert (created.version, created.change_request_id, created.created_by.username) == (1, cr_id, "bob")
    assert list(cr.approvals.values_list("user__username", "decision", "plan_hash")) == [
        ("carol", "approve", cr.plan_hash),
        ("bob", "approve", cr.plan_hash),
    ]
    actions = list(
        AuditLogEntry.objects.filter(object_type="change_request", object_id=str(cr_id))
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == [
        "change_request.submit",
        "change_request.approve",
        "change_request.approve",
        "change_request.approved",
    ]
    assert AuditLogEntry.objects.filter(action="feature.create", actor_name="bob").count() == 1
    assert AuditLogEntry.objects.filter(action="feature.update", actor_name="bob").count() == 1


def test_one_owning_team_member_suffices_for_a_non_breaking_change(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Team says so.")])
    response = approve(client_for("alice"), cr_id)
    assert response.json()["missing"] == []
    assert ChangeRequest.objects.get(pk=cr_id).state == "approved"
    assert revision() == 2


def test_an_admin_outside_the_team_still_needs_the_team(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Admin only.")])
    response = approve(client_for("root"), cr_id)
    assert response.status_code == 200
    assert response.json()["change_request"]["state"] == "proposed"
    assert response.json()["missing"] == ["an approval from a member of team-straddle (owns c1)"]


def test_approving_twice_is_refused(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Twice.")])
    assert approve(client_for("carol"), cr_id).status_code == 200
    again = approve(client_for("carol"), cr_id)
    assert again.status_code == 409
    assert again.json()["code"] == "conflict"
    assert Approval.objects.filter(change_request_id=cr_id, user__username="carol").count() == 1


def test_approving_a_plan_other_than_the_current_one_is_refused(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Hash.")])
    response = approve(client_for("alice"), cr_id, plan_hash="0" * 64)
    assert response.status_code == 409
    assert ChangeRequest.objects.get(pk=cr_id).state == "proposed"
    current = ChangeRequest.objects.get(pk=cr_id).plan_hash
    assert approve(client_for("alice"), cr_id, plan_hash=current).status_code == 200
    assert ChangeRequest.objects.get(pk=cr_id).state == "approved"


def test_approving_an_unknown_change_request_is_404(reference, client_for):
    response = approve(client_for("alice"), 999_999)
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


# --- Breaking changes in prod -------------------------------------------------------------------------------------


@pytest.fixture
def prod(reference, specs) -> list[dict[str, Any]]:
    catalog_load(specs_dir=SPECS_DIR, environment_names=["prod"])
    assert revision("prod") == 1
    return specs


def test_a_breaking_change_to_prod_needs_two_distinct_approvers(prod, client_for):
    c1 = copy.deepcopy(prod[0])
    removed = c1["features"].pop(5)["name"]
    cr_id = submit(client_for("dave"), [c1], environment="prod")
    assert ChangeRequest.objects.get(pk=cr_id).is_breaking is True

    first = approve(client_for("alice"), cr_id)
    assert first.status_code == 200
    assert first.json()["change_request"]["state"] == "proposed"
    assert first.json()["missing"] == ["2 distinct approvers (breaking change in prod); have 1"]
    assert approve(client_for("alice"), cr_id).status_code == 409
    assert revision("prod") == 1

    second = approve(client_for("bob"), cr_id)
    assert second.json()["missing"] == []
    assert second.json()["change_request"]["state"] == "approved"
    assert revision("prod") == 2
    assert Feature.objects.get(environment__name="prod", name=removed).status == "deprecated"
    assert ProvisioningRun.objects.filter(change_request_id=cr_id, state="queued").count() == 1


def test_two_approvers_outside_the_owning_team_are_not_enough_in_prod(prod, client_for):
    c1 = copy.deepcopy(prod[0])
    c1["features"][3]["dtype"] = "string"
    cr_id = submit(client_for("dave"), [c1], environment="prod")
    approve(client_for("carol"), cr_id)
    response = approve(client_for("root"), cr_id)
    assert response.json()["missing"] == ["an approval from a member of team-straddle (owns c1)"]
    third = approve(client_for("alice"), cr_id)
    assert third.json()["change_request"]["state"] == "approved"
    feature = Feature.objects.get(environment__name="prod", name=c1["features"][3]["name"])
    assert (feature.version, feature.column_name) == (2, f"{feature.name}__v2")
    assert feature.versions.count() == 2


def test_a_non_breaking_change_to_prod_needs_one_team_approval(prod, client_for):
    c1 = described(prod[0], 0, "Clearer text.")
    cr_id = submit(client_for("dave"), [c1], environment="prod")
    assert ChangeRequest.objects.get(pk=cr_id).is_breaking is False
    assert approve(client_for("bob"), cr_id).json()["change_request"]["state"] == "approved"


def test_a_breaking_change_in_dev_needs_one_approver(c1, client_for):
    spec = copy.deepcopy(c1)
    spec["features"].pop()
    cr_id = submit(client_for("dave"), [spec])
    assert ChangeRequest.objects.get(pk=cr_id).is_breaking is True
    assert approve(client_for("alice"), cr_id).json()["change_request"]["state"] == "approved"


# --- No lost updates ----------------------------------------------------------------------------------------------


def test_approval_after_the_revision_moved_is_a_conflict_until_replanned(c1, client_for):
    apply_specs([mini_spec("c2", owner="team-greeks")])
    first = submit(client_for("dave"), [described(c1, 1, "First.")])
    c2 = mini_spec("c2", owner="team-greeks")
    c2["features"][1]["description"] = "Second."
    second = submit(client_for("dave"), [c2])
    assert approve(client_for("carol"), second).status_code == 200  # a reviewer's approval, before the move

    assert approve(client_for("alice"), first).json()["change_request"]["state"] == "approved"
    assert revision() == 3

    conflict = approve(client_for("gina"), second)
    assert conflict.status_code == 409
    body = conflict.json()
    assert body["code"] == "conflict"
    assert (body["base_revision"], body["current_revision"]) == (2, 3)
    assert "re-plan" in body["message"]
    assert ChangeRequest.objects.get(pk=second).state == "proposed"
    assert revision() == 3
    assert not Approval.objects.filter(change_request_id=second, user__username="gina").exists()
    assert [e.actor_name for e in refusals(second)] == ["gina"]

    replanned = client_for("dave").post(f"{SUBMIT_URL}{second}/replan/", format="json")
    assert replanned.status_code == 200, replanned.content
    assert replanned.json()["base_revision"] == 3
    assert [a["current"] for a in replanned.json()["approvals"]] == [False]
    assert AuditLogEntry.objects.filter(action="change_request.replan", object_id=str(second)).exists()

    done = approve(client_for("gina"), second)
    assert done.status_code == 200, done.content
    assert done.json()["change_request"]["state"] == "approved"
    assert revision() == 4
    assert Feature.objects.get(environment__name="dev", name="c1_beta").description == "First."
    assert Feature.objects.get(environment__name="dev", name="c2_beta").description == "Second."


def test_a_replan_over_a_change_to_the_same_feature_shows_the_revert(c1, client_for):
    first = submit(client_for("dave"), [described(c1, 1, "First.")])
    second = submit(client_for("dave"), [described(c1, 2, "Second.")])
    approve(client_for("alice"), first)
    assert approve(client_for("bob"), second).status_code == 409
    replanned = client_for("dave").post(f"{SUBMIT_URL}{second}/replan/", format="json").json()
    fields = {c["feature"]: c["fields"] for c in replanned["plan"]["changes"]}
    # The second spec was written before the first change: the re-plan makes its revert visible to the reviewer.
    assert fields["c1_beta"] == [{"field": "description", "old": "First.", "new": "beta of c1."}]
    assert fields["c1_gamma_ratio"] == [{"field": "description", "old": "gamma_ratio of c1.", "new": "Second."}]


def test_service_conflict_when_the_revision_moved(c1, users):
    from catalog.services import change_request_submit

    a = change_request_submit(
        user=users["dave"], environment_name="dev", title="a", payload={"specs": [described(c1, 0, "A")]}
    )
    b = change_request_submit(
        user=users["dave"], environment_name="dev", title="b", payload={"specs": [described(c1, 1, "B")]}
    )
    change_request_approve(user=users["alice"], change_request_id=a.change_request.pk)
    with pytest.raises(Conflict) as raised:
        change_request_approve(user=users["alice"], change_request_id=b.change_request.pk)
    assert raised.value.status == 409
    assert raised.value.code == "conflict"
    assert ProvisioningRun.objects.filter(change_request__isnull=False).count() == 1
    assert not ProvisioningRun.objects.filter(change_request_id=b.change_request.pk).exists()


# --- Reject -------------------------------------------------------------------------------------------------------


def test_reject_with_a_comment(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "Nope.")])
    response = client_for("carol").post(f"{SUBMIT_URL}{cr_id}/reject/", {"comment": "Wrong source."}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["state"] == "rejected"
    assert response.json()["approvals"][0]["decision"] == "reject"
    assert response.json()["approvals"][0]["comment"] == "Wrong source."
    entry = AuditLogEntry.objects.get(action="change_request.reject", object_id=str(cr_id))
    assert entry.actor_name == "carol"
    assert entry.after["comment"] == "Wrong source."
    assert entry.after["state"] == "rejected"
    assert entry.before["state"] == "proposed"
    late = approve(client_for("alice"), cr_id)
    assert late.status_code == 409
    assert revision() == 1
    assert not ProvisioningRun.objects.filter(change_request_id=cr_id).exists()


def test_reject_needs_a_comment(c1, client_for):
    cr_id = submit(client_for("dave"), [described(c1, 1, "x")])
    response = client_for("carol").post(f"{SUBMIT_URL}{cr_id}/reject/", {}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "comment"
    assert ChangeRequest.objects.get(pk=cr_id).state == "proposed"


def test_the_author_cannot_reject_either(c1, client_for):
    cr_id = submit(client_for("alice"), [described(c1, 1, "x")])
    response = client_for("alice").post(f"{SUBMIT_URL}{cr_id}/reject/", {"comment": "withdrawn"}, format="json")
    assert response.status_code == 403
    assert refusals(cr_id, "change_request.reject.refused")[0].actor_name == "alice"


# --- Promotion ----------------------------------------------------------------------------------------------------


def _mark_applied(cr_id: int) -> None:
    # Stands in for provisioning finishing: the worker moves an approved change request to applied.
    ChangeRequest.objects.filter(pk=cr_id).update(state=ChangeRequest.State.APPLIED)


def promote(client: Any, cr_id: int, **body: Any) -> Any:
    return client.post(f"{SUBMIT_URL}{cr_id}/promote/", body, format="json")


def test_promote_dev_to_staging_to_prod(c1, client_for):
    dev_cr = submit(client_for("dave"), [described(c1, 1, "Promoted.")])
    assert promote(client_for("dave"), dev_cr).status_code == 409  # proposed
    approve(client_for("alice"), dev_cr)
    assert promote(client_for("dave"), dev_cr).status_code == 409  # approved, not yet applied
    _mark_applied(dev_cr)

    response = promote(client_for("dave"), dev_cr)
    assert response.status_code == 201, response.content
    staging = response.json()["change_request"]
    assert (staging["environment"], staging["state"], staging["promoted_from"]) == ("staging", "proposed", dev_cr)
    staging_cr = ChangeRequest.objects.get(pk=staging["id"])
    assert staging_cr.specs == ChangeRequest.objects.get(pk=dev_cr).specs
    assert staging_cr.plan["environment"] == "staging"
    assert staging_cr.base_revision == 0
    # Staging had nothing yet: the promoted plan creates c1 there.
    assert staging_cr.plan["summary"]["create"] == 3
    assert AuditLogEntry.objects.filter(
        action="change_request.submit", object_id=str(staging_cr.pk), environment="staging"
    ).exists()

    assert promote(client_for("dave"), staging_cr.pk).status_code == 409  # it must be approved and applied first
    assert approve(client_for("alice"), staging_cr.pk).json()["change_request"]["state"] == "approved"
    assert revision("staging") == 1
    assert revision("dev") == 2
    _mark_applied(staging_cr.pk)

    to_prod = promote(client_for("dave"), staging_cr.pk, environment="prod")
    assert to_prod.status_code == 201, to_prod.content
    prod_cr = to_prod.json()["change_request"]
    assert (prod_cr["environment"], prod_cr["promoted_from"]) == ("prod", staging_cr.pk)

    _mark_applied(prod_cr["id"])
    last = promote(client_for("dave"), prod_cr["id"])
    assert last.status_code == 409
    assert "last environment" in last.json()["message"]


@pytest.mark.parametrize("target", ["prod", "dev"])
def test_promote_to_the_wrong_environment_is_a_conflict(c1, client_for, target):
    cr_id = submit(client_for("dave"), [described(c1, 1, "x")])
    approve(client_for("alice"), cr_id)
    _mark_applied(cr_id)
    response = promote(client_for("dave"), cr_id, environment=target)
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "staging" in response.json()["message"]
    assert not ChangeRequest.objects.filter(promoted_from_id=cr_id).exists()


def test_promoting_what_is_already_there_creates_nothing(c1, client_for):
    apply_specs([described(c1, 1, "x")], environment="staging")
    cr_id = submit(client_for("dave"), [described(c1, 1, "x")])
    approve(client_for("alice"), cr_id)
    _mark_applied(cr_id)
    response = promote(client_for("dave"), cr_id)
    assert response.status_code == 200
    assert response.json()["change_request"] is None
    assert response.json()["plan"]["is_empty"] is True


# --- Supersede ----------------------------------------------------------------------------------------------------


def test_a_new_change_request_supersedes_a_proposed_one(c1, client_for):
    old = submit(client_for("dave"), [described(c1, 1, "Draft.")])
    new = submit(client_for("dave"), [described(c1, 1, "Final.")], supersedes=old)
    superseded = ChangeRequest.objects.get(pk=old)
    assert (superseded.state, superseded.superseded_by_id) == ("superseded", new)
    entry = AuditLogEntry.objects.get(action="change_request.supersede", object_id=str(old))
    assert (entry.before["state"], entry.after["state"]) == ("proposed", "superseded")
    assert approve(client_for("alice"), old).status_code == 409
    assert approve(client_for("alice"), new).json()["change_request"]["state"] == "approved"
    assert Feature.objects.get(environment__name="dev", name="c1_beta").description == "Final."


def test_only_a_proposed_change_request_can_be_superseded(c1, client_for):
    old = submit(client_for("dave"), [described(c1, 1, "Draft.")])
    client_for("carol").post(f"{SUBMIT_URL}{old}/reject/", {"comment": "no"}, format="json")
    before = ChangeRequest.objects.count()
    response = client_for("dave").post(
        SUBMIT_URL, {"environment": "dev", "specs": [described(c1, 1, "Final.")], "supersedes": old}, format="json"
    )
    assert response.status_code == 409
    # The new change request is not left behind: the whole submission is one transaction.
    assert ChangeRequest.objects.count() == before
    assert ChangeRequest.objects.get(pk=old).state == "rejected"


def test_a_change_request_in_another_environment_cannot_be_superseded(c1, client_for):
    apply_specs([c1], environment="staging")
    other = submit(client_for("dave"), [described(c1, 1, "Staging.")], environment="staging")
    response = client_for("dave").post(
        SUBMIT_URL, {"environment": "dev", "specs": [described(c1, 1, "Dev.")], "supersedes": other}, format="json"
    )
    assert response.status_code == 409
    assert ChangeRequest.objects.get(pk=other).state == "proposed"


def test_an_approval_with_the_broker_down_is_kept_and_the_reaper_sends_the_run_later(
    c1, client_for, django_capture_on_commit_callbacks, monkeypatch, settings, caplog
):
    """The run row is the job; the broker only wakes a worker. A broker that refuses the message must not turn
    a committed approval into a 500: the run stays queued and the reaper sends it once it has waited."""
    from kombu.exceptions import OperationalError

    from provisioning.runner import runs_reap_stale
    from workers import tasks

    def broker_down(run_id: int) -> None:
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(tasks.provisioning_run_execute, "delay", broker_down)
    cr_id = submit(client_for("dave"), [described(c1, 1, "Approved while the broker is down.")])
    with django_capture_on_commit_callbacks(execute=True):
        response = approve(client_for("alice"), cr_id)
    assert response.status_code == 200, response.content
    run = ProvisioningRun.objects.get(change_request_id=cr_id)
    assert (run.state, ChangeRequest.objects.get(pk=cr_id).state) == ("queued", "approved")
    assert any("broker unreachable" in r.getMessage() for r in caplog.records)
    assert run.pk not in runs_reap_stale()  # not yet: a message may still be on its way
    settings.FCC_RUN_STALE_SECONDS = 0
    # The environment's bootstrap run (never executed here) comes first: it hands the turn on when it ends.
    earlier = ProvisioningRun.objects.filter(environment=run.environment, revision__lt=run.revision)
    assert runs_reap_stale() == list(earlier.values_list("pk", flat=True)) != []
    earlier.update(state="succeeded")
    assert runs_reap_stale() == [run.pk]
