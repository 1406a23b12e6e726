"""A claimed job's heartbeat, kept by a thread while the job works.

The reapers (provisioning.runner) put a run or backfill back in the queue when its heartbeat is older than
FCC_RUN_STALE_SECONDS: its worker is taken for dead. A job that only beat between steps or partition jobs was
taken for dead too while one long step or load was still running, and another worker then ran it beside the
first. While the block runs, a thread sets the heartbeat every quarter of the stale period, and only on the
row this worker still holds (same state, same claim): a job reaped and claimed by another worker in the
meantime is not kept alive by the first.
"""

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connections
from django.db.models import Model
from django.utils import timezone

logger = logging.getLogger(__name__)
MIN_INTERVAL_SECONDS = 0.1


def interval_seconds() -> float:
    return max(MIN_INTERVAL_SECONDS, int(settings.FCC_RUN_STALE_SECONDS) / 4)


@contextmanager
def heartbeat(model: type[Model], pk: int, **held: Any) -> Iterator[None]:
    """Beats `model` row `pk` while the block runs, as long as the row still matches `held` (e.g. its state and
    claimed_by)."""
    stop = threading.Event()
    interval = interval_seconds()

    def beat() -> None:
        try:
            while not stop.wait(interval):
                try:
                    model._default_manager.filter(pk=pk, **held).update(heartbeat_at=timezone.now())
                except DatabaseError as error:
                    # The next beat tries again; a database away for longer than the stale period lets the
                    # reaper free the job, as it would for a dead worker.
                    logger.warning(
                        "heartbeat not written", extra={"model": model.__name__, "pk": pk, "error": str(error)}
                    )
        finally:
            connections.close_all()  # this thread's own connections

    thread = threading.Thread(target=beat, name=f"heartbeat-{model.__name__}-{pk}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
