import logging
from typing import Any

from django.db import transaction

from catalog.models import ChangeRequest, Environment
from provisioning.models import ProvisioningRun

logger = logging.getLogger(__name__)


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

    def enqueue() -> None:
        from workers.tasks import provisioning_run_execute

        provisioning_run_execute.delay(run.pk)
        logger.info("provisioning run queued", extra={"run": run.pk, "environment": environment.name})

    transaction.on_commit(enqueue)
    return run
