"""Celery tasks: thin interfaces that load a row by id and call a service. Safe to deliver twice."""

import logging
import os
import socket
from typing import Any

from celery import shared_task
from celery.signals import task_postrun, task_prerun

from config.logging import job_id_var

logger = logging.getLogger(__name__)


@task_prerun.connect
def _bind_job_id(task_id: str | None = None, **_: Any) -> None:
    job_id_var.set(task_id)


@task_postrun.connect
def _unbind_job_id(**_: Any) -> None:
    job_id_var.set(None)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@shared_task(name="provisioning.run_execute", acks_late=True)
def provisioning_run_execute(run_id: int) -> None:
    from provisioning.dispatch import WORKER_PUBLISH_RETRY_POLICY, task_send
    from provisioning.models import ProvisioningRun
    from provisioning.runner import RunNotReady, run_execute, run_in_turn

    try:
        state = run_execute(run_id=run_id, worker=worker_name())
    except RunNotReady as waiting:
        # Runs of one environment apply in revision order. The earlier run sends this one when it ends (below),
        # so no message waits in the broker (where a restart could lose it); the reaper sends a queued run
        # whose message went missing all the same.
        logger.info("run waits its turn", extra={"run": run_id, "reason": str(waiting)})
        return
    if state in (ProvisioningRun.State.SUCCEEDED, ProvisioningRun.State.FAILED):
        environment_id = ProvisioningRun.objects.values_list("environment_id", flat=True).get(pk=run_id)
        following = run_in_turn(environment_id)
        if following is not None:
            task_send(
                provisioning_run_execute, following, job="provisioning_run", retry_policy=WORKER_PUBLISH_RETRY_POLICY
            )


@shared_task(name="provisioning.reap_stale_runs")
def provisioning_reap_stale_runs() -> None:
    from provisioning.runner import backfills_reap_stale, runs_reap_stale
    from provisioning.training import training_datasets_reap_stale

    for run_id in runs_reap_stale():
        provisioning_run_execute.delay(run_id)
    for backfill_id in backfills_reap_stale():
        backfill_execute_task.delay(backfill_id)
    for dataset_id in training_datasets_reap_stale():
        training_dataset_task.delay(dataset_id)


@shared_task(name="provisioning.backfill_execute", acks_late=True)
def backfill_execute_task(backfill_id: int) -> None:
    from provisioning.backfill import backfill_execute

    backfill_execute(backfill_id=backfill_id, worker=worker_name())


@shared_task(name="provisioning.drift_detect_all")
def provisioning_drift_detect_all() -> None:
    from catalog.models import Environment
    from provisioning.drift import drift_detect

    for environment in Environment.objects.filter(revision__gt=0):
        drift_detect(environment=environment, trigger="schedule")


@shared_task(name="provisioning.online_sync_all")
def online_sync_all() -> None:
    from catalog.models import Environment
    from provisioning.backends import store_config
    from provisioning.online_sync import online_sync

    for environment in Environment.objects.filter(revision__gt=0):
        # Vertex AI feature views sync themselves from BigQuery on their cron.
        if store_config(environment.name)["online"] == "local":
            online_sync(environment=environment)


@shared_task(name="provisioning.training_dataset", acks_late=True)
def training_dataset_task(dataset_id: int) -> None:
    from provisioning.training import training_dataset_execute

    training_dataset_execute(dataset_id=dataset_id, worker=worker_name())
