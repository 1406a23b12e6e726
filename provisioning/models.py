from django.db import models


class ProvisioningRun(models.Model):
    """The work of applying one approved plan to an environment's stores. Workers claim it by compare-and-set."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    change_request = models.ForeignKey(
        "catalog.ChangeRequest", null=True, blank=True, on_delete=models.PROTECT, related_name="provisioning_runs"
    )
    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="provisioning_runs")
    revision = models.PositiveIntegerField()
    # The exact plan that was approved; the run applies only this.
    plan = models.JSONField()
    plan_hash = models.CharField(max_length=64)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    attempts = models.PositiveIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "heartbeat_at"])]
        constraints = [
            models.UniqueConstraint(fields=["environment", "revision"], name="one_run_per_env_revision"),
        ]

    def __str__(self) -> str:
        return f"run {self.pk} ({self.environment_id}@{self.revision}, {self.state})"
