"""Sending a job's task. The row is the job; the message only wakes a worker. When the broker cannot take the
message, whatever made the row still succeeds (its transaction has committed) and the reaper sends the message
again (runner.runs_reap_stale, backfills_reap_stale, training.training_datasets_reap_stale)."""

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)


# A worker sending the next job rides out a broker restart (about a minute of attempts) before it leaves the
# job to the reaper; a request sends once with Celery's default policy (a second or so) and answers.
WORKER_PUBLISH_RETRY_POLICY = {"max_retries": 30, "interval_start": 0.5, "interval_step": 0.5, "interval_max": 2}


def task_send(task: Any, job_id: int, *, job: str, retry_policy: dict[str, Any] | None = None) -> bool:
    """Sends the job's message now; False (logged) when the broker did not take it."""
    try:
        if retry_policy is None:
            task.delay(job_id)
        else:
            task.apply_async((job_id,), retry=True, retry_policy=retry_policy)
    except Exception:  # any broker failure: the committed row is sent again by the reaper
        logger.warning(
            "broker unreachable: the job stays queued and the reaper sends it again",
            extra={"job": job, "job_row": job_id},
            exc_info=True,
        )
        return False
    logger.info("job queued", extra={"job": job, "job_row": job_id})
    return True


def task_send_on_commit(task: Any, job_id: int, *, job: str) -> None:
    transaction.on_commit(lambda: task_send(task, job_id, job=job))
