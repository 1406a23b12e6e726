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


class ProvisioningStep(models.Model):
    """One step of a run, recorded as it executes: what was sent, what came back, how it ended."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    run = models.ForeignKey(ProvisioningRun, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    kind = models.CharField(max_length=64)
    target = models.CharField(max_length=200, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    request = models.JSONField(default=list)
    result = models.JSONField(default=dict)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="unique_run_step")]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.index} {self.kind} ({self.status})"


class Backfill(models.Model):
    """Loading history into a column or table. Breaking changes schedule one; the data plane executes it."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="backfills")
    component = models.ForeignKey("catalog.Component", on_delete=models.PROTECT, related_name="backfills")
    features = models.JSONField(default=list)
    reason = models.CharField(max_length=200)
    provisioning_run = models.ForeignKey(
        ProvisioningRun, null=True, blank=True, on_delete=models.PROTECT, related_name="backfills"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A rerun of the run that scheduled it finds it instead of scheduling it twice.
            models.UniqueConstraint(
                fields=["provisioning_run", "component", "reason"], name="one_backfill_per_run_step"
            ),
        ]

    def __str__(self) -> str:
        return f"backfill {self.pk} {self.component_id} ({self.state})"


class DriftReport(models.Model):
    """What the live stores have that the catalog does not, and the reverse, at one moment."""

    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="drift_reports")
    revision = models.PositiveIntegerField()
    findings = models.JSONField(default=list)
    consistent = models.BooleanField()
    error = models.TextField(blank=True)
    trigger = models.CharField(max_length=16, default="schedule")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["environment", "-created_at"])]

    def __str__(self) -> str:
        return f"drift {self.environment_id}@{self.revision}: {len(self.findings)} findings"
