from django.conf import settings
from django.db import models


class Environment(models.Model):
    """A deployment target. `revision` counts the catalog changes applied to it; plans are computed against one."""

    class Name(models.TextChoices):
        DEV = "dev", "dev"
        STAGING = "staging", "staging"
        PROD = "prod", "prod"

    name = models.CharField(max_length=16, unique=True, choices=Name.choices)
    gcp_project = models.CharField(max_length=64)
    region = models.CharField(max_length=32)
    revision = models.PositiveIntegerField(default=0)
    # Breaking changes here need two distinct approvers (prod).
    breaking_approvals_required = models.PositiveSmallIntegerField(default=1)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name

    @property
    def bigquery_dataset(self) -> str:
        return f"market_regime_{self.name}"


class AppliedRevision(models.Model):
    """One row per revision of an environment's catalog: which change request made it and what it applied."""

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="applied_revisions")
    revision = models.PositiveIntegerField()
    change_request = models.ForeignKey(
        "catalog.ChangeRequest", null=True, blank=True, on_delete=models.PROTECT, related_name="applied_revisions"
    )
    plan_hash = models.CharField(max_length=64)
    applied_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    applied_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["environment", "-revision"]
        constraints = [models.UniqueConstraint(fields=["environment", "revision"], name="unique_env_revision")]

    def __str__(self) -> str:
        return f"{self.environment}@{self.revision}"
