from django.conf import settings
from django.db import models

from catalog.models.environment import Environment


class ChangeRequest(models.Model):
    class State(models.TextChoices):
        PROPOSED = "proposed", "proposed"
        APPROVED = "approved", "approved"
        REJECTED = "rejected", "rejected"
        APPLYING = "applying", "applying"
        APPLIED = "applied", "applied"
        FAILED = "failed", "failed"
        SUPERSEDED = "superseded", "superseded"

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="change_requests")
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="change_requests")
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROPOSED)
    # The specs as submitted (normalised), and the plan computed from them against `base_revision`.
    specs = models.JSONField()
    plan = models.JSONField()
    plan_hash = models.CharField(max_length=64)
    base_revision = models.PositiveIntegerField()
    components = models.JSONField(default=list)
    is_breaking = models.BooleanField(default=False)
    applied_revision = models.PositiveIntegerField(null=True, blank=True)
    promoted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="promotions"
    )
    superseded_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="supersedes"
    )
    failure_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["environment", "state"])]

    def __str__(self) -> str:
        return f"CR-{self.pk} {self.title}"


class Approval(models.Model):
    """A reviewer's decision on one exact plan (by hash); a re-plan makes earlier approvals stale."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "approve"
        REJECT = "reject", "reject"

    change_request = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals")
    decision = models.CharField(max_length=16, choices=Decision.choices)
    comment = models.TextField(blank=True)
    plan_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["change_request", "user", "plan_hash"], name="one_decision_per_plan")
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} CR-{self.change_request_id}"
