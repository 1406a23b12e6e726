import os
from typing import Any

from celery import Celery
from kombu.transport import redis as kombu_redis

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("feature_catalog_console")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["workers"])


def _restore_unacked_after_collect(original: Any) -> Any:
    """Celery 5.7.0 closes the broker connection after it has already collected it when the broker goes away
    (Consumer.on_connection_error_after_connected: collect(), then close()). Closing the channel then restores
    the worker's unacknowledged messages through a connection that no longer has its parameters, raises
    AttributeError instead of a connection error, and the worker dies ("Unrecoverable error"). Those messages
    are still in Redis's unacked set and come back after the visibility timeout, so there is nothing to restore
    here: skip, and let the worker reconnect. tests/test_broker_restart.py restarts Redis under a worker."""

    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and getattr(self.channel.connection, "client", None) is None:
            return None
        return original(self, client)

    return restore_unacked


kombu_redis.QoS.restore_unacked = _restore_unacked_after_collect(kombu_redis.QoS.restore_unacked)  # type: ignore[method-assign]
