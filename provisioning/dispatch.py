"""Sending a job's task once the transaction that made its row commits. The row is the job; the message only
wakes a worker. When the broker cannot take the message, the request that made the row still succeeds (its
transaction has committed) and the reaper sends the message again (runner.runs_reap_stale,
backfills_reap_stale, training.training_datasets_reap_stale)."""

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger(__name__)


def task_send_on_commit(task: Any, job_id: int, *, job: str) -> None:
    def send() -> None:
        try:
            task.delay(job_id)
        except Exception:  # any broker failure: the committed row is sent again by the reaper
            logger.warning(
                "broker unreachable: the job stays queued and the reaper sends it again",
                extra={"job": job, "job_row": job_id},
                exc_info=True,
            )
            return
        logger.info("job queued", extra={"job": job, "job_row": job_id})

    transaction.on_commit(send)
