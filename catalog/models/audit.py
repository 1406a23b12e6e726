import hashlib
import json
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

from catalog.models.immutable import ImmutableModel

GENESIS_HASH = "0" * 64


class AuditChainHead(models.Model):
    """A single row locked by every audit write, so entries form one chain even under concurrent writers."""

    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    last_entry_id = models.BigIntegerField(null=True)

    def __str__(self) -> str:
        return f"audit chain head at entry {self.last_entry_id}"


class AuditLogEntry(ImmutableModel):
    """Append-only: who did what, when, with the state before and after. Each entry hashes the one before."""

    at = models.DateTimeField()
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    environment = models.CharField(max_length=16, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    job_id = models.CharField(max_length=64, blank=True)
    prev_hash = models.CharField(max_length=64)
    entry_hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "audit log entries"
        indexes = [
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["action"]),
            models.Index(fields=["environment", "at"]),
        ]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.object_type}:{self.object_id}"

    def canonical(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "actor": self.actor_name,
            "action": self.action,
            "object_type": self.object_type,
            "object_id": self.object_id,
            "environment": self.environment,
            "before": self.before,
            "after": self.after,
            "request_id": self.request_id,
            "job_id": self.job_id,
            "prev_hash": self.prev_hash,
        }

    def compute_hash(self) -> str:
        payload = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder)
        return hashlib.sha256(payload.encode()).hexdigest()
