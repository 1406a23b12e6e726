from django.conf import settings
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
    """Loading history from Parquet into the offline tables, partition by partition.

    Requested through the API, or scheduled by a breaking change (which adds a new version's column that
    only a backfill fills). A partition is replaced atomically, so a rerun or a cancel never leaves one half
    written or doubled.
    """

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELLED = "cancelled", "cancelled"

    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="backfills")
    components = models.JSONField(default=list)
    source = models.CharField(max_length=1024)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    reason = models.CharField(max_length=200)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    provisioning_run = models.ForeignKey(
        ProvisioningRun, null=True, blank=True, on_delete=models.PROTECT, related_name="backfills"
    )
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    cancel_requested = models.BooleanField(default=False)
    partitions_total = models.PositiveIntegerField(default=0)
    partitions_done = models.PositiveIntegerField(default=0)
    rows_loaded = models.BigIntegerField(default=0)
    bytes_loaded = models.BigIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # A rerun of the run that scheduled it finds it instead of scheduling it twice.
            models.UniqueConstraint(fields=["provisioning_run", "reason"], name="one_backfill_per_run_step"),
        ]

    def __str__(self) -> str:
        return f"backfill {self.pk} ({self.state})"


class BackfillPartition(models.Model):
    """One partition (component table, date) of a backfill, with the row counts reconciled after it."""

    class Status(models.TextChoices):
        PENDING = "pending", "pending"
        DONE = "done", "done"
        MISMATCH = "mismatch", "mismatch"

    backfill = models.ForeignKey(Backfill, on_delete=models.CASCADE, related_name="partitions")
    component = models.CharField(max_length=16)
    partition_date = models.DateField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    source_rows = models.BigIntegerField(default=0)
    target_rows = models.BigIntegerField(default=0)
    source_bytes = models.BigIntegerField(default=0)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["backfill", "component", "partition_date"]
        constraints = [
            models.UniqueConstraint(
                fields=["backfill", "component", "partition_date"], name="unique_backfill_partition"
            )
        ]

    def __str__(self) -> str:
        return f"{self.component} {self.partition_date} ({self.status})"


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


class OnlineSyncState(models.Model):
    """How far the online sync of one component has read the offline table."""

    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="online_syncs")
    component = models.CharField(max_length=16)
    watermark = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    last_rows = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["environment", "component"], name="one_sync_state_per_component")
        ]

    def __str__(self) -> str:
        return f"sync {self.environment_id}/{self.component} at {self.watermark}"


class TrainingDataset(models.Model):
    """A point-in-time training set: entity rows in, one Parquet file out, written by a worker."""

    class State(models.TextChoices):
        QUEUED = "queued", "queued"
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"

    environment = models.ForeignKey("catalog.Environment", on_delete=models.PROTECT, related_name="training_datasets")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    entity_file = models.CharField(max_length=1024)
    entity_rows = models.BigIntegerField(default=0)
    selection = models.JSONField(default=dict)
    features = models.JSONField(default=list)
    state = models.CharField(max_length=16, choices=State.choices, default=State.QUEUED)
    result_path = models.CharField(max_length=1024, blank=True)
    result_rows = models.BigIntegerField(default=0)
    result_bytes = models.BigIntegerField(default=0)
    claimed_by = models.CharField(max_length=200, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    # Set by the claiming worker while the job runs (provisioning.heartbeat); the reaper re-queues a running job
    # whose heartbeat is older than FCC_RUN_STALE_SECONDS.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="training_state_heartbeat")]

    def __str__(self) -> str:
        return f"training dataset {self.pk} ({self.state})"
