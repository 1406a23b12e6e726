import os
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import worker_init, worker_process_init
from kombu.transport import redis as kombu_redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("feature_catalog_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])


@worker_init.connect
@worker_process_init.connect
def _configure_allocator(**_: Any) -> None:
    """Workers build large tables (training datasets, backfill partitions): glibc's mmap threshold is fixed in
    the worker (before its pool's processes fork) and again in each pool process (provisioning/memory.py)."""
    from provisioning.memory import allocator_configure

    allocator_configure()


def _only_while_connected(original: Callable[..., Any]) -> Callable[..., Any]:
    """Celery 5.7.0 closes the broker connection after it has collected it when the broker goes away
    (Consumer.on_connection_error_after_connected: collect(), then close()). The old channel is left without a
    connection, so restoring its unacknowledged messages (on close) or acknowledging a task that finishes after
    the loss raises AttributeError instead of a connection error, and the worker dies ("Unrecoverable error").
    Both can be skipped safely: the messages are still in Redis's unacked set and come back after the visibility
    timeout, and a redelivered task finds its job already claimed (compare-and-set) and does nothing. Seen in
    CI runs of tests/test_broker_restart.py, which restarts Redis under a worker."""

    def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        transport = getattr(self.channel, "connection", None)
        if transport is None or getattr(transport, "client", None) is None:
            return None
        return original(self, *args, **kwargs)

    return guarded


for _name in ("restore_unacked", "ack", "reject"):
    setattr(kombu_redis.QoS, _name, _only_while_connected(getattr(kombu_redis.QoS, _name)))
