from typing import Any

from django.db import transaction

from catalog import roles
from catalog.audit import audit_log_write, audit_refusal
from catalog.errors import Conflict, NotFound, PermissionDenied
from catalog.models import ChangeRequest, Environment
from provisioning.dispatch import task_send_on_commit
from provisioning.models import ProvisioningRun


def provisioning_run_queue(
    *,
    environment: Environment,
    change_request: ChangeRequest | None,
    plan: dict[str, Any],
    plan_hash: str,
    revision: int,
) -> ProvisioningRun:
    """A run row for the approved plan, and a task for a worker once the transaction commits."""
    run = ProvisioningRun.objects.create(
        environment=environment, change_request=change_request, plan=plan, plan_hash=plan_hash, revision=revision
    )

    from workers.tasks import provisioning_run_execute

    task_send_on_commit(provisioning_run_execute, run.pk, job="provisioning_run")
    return run


def provisioning_run_retry(*, user: Any, run_id: int) -> ProvisioningRun:
    """Puts a failed run back in the queue (admins and reviewers); it resumes at its first unfinished step."""
    if not (roles.is_admin(user) or roles.is_reviewer(user)):
        reason = "only admins and reviewers may retry provisioning runs"
        audit_refusal(
            actor=user, action="provisioning_run.retry", object_type="provisioning_run", object_id=run_id, reason=reason
        )
        raise PermissionDenied(reason)
    with transaction.atomic():
        run = ProvisioningRun.objects.select_for_update().select_related("environment").filter(pk=run_id).first()
        if run is None:
            raise NotFound(f"provisioning run {run_id} does not exist")
        if run.state != ProvisioningRun.State.FAILED:
            raise Conflict(f"provisioning run {run_id} is {run.state}; only failed runs can be retried")
        run.state = ProvisioningRun.State.QUEUED
        run.error = ""
        run.save(update_fields=["state", "error"])
        audit_log_write(
            actor=user,
            action="provisioning_run.retry",
            object_type="provisioning_run",
            object_id=run.pk,
            environment=run.environment.name,
            before={"state": "failed"},
            after={"state": "queued"},
        )

        from workers.tasks import provisioning_run_execute

        task_send_on_commit(provisioning_run_execute, run.pk, job="provisioning_run")
    return run
