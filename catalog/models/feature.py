from django.conf import settings
from django.db import models

from catalog.models.environment import Environment
from catalog.models.immutable import ImmutableModel
from catalog.models.team import Team


class EntityType(models.Model):
    name = models.CharField(max_length=64, unique=True)
    description = models.TextField(blank=True)
    # [{"name": "symbol", "dtype": "STRING"}, ...] in BigQuery types, in key order.
    key_columns = models.JSONField()
    # How the online entity id is built from the key columns, e.g. ${symbol}_${yyyymmddHHMM}_${dte}.
    id_template = models.CharField(max_length=200)

    def __str__(self) -> str:
        return self.name

    @property
    def key_column_names(self) -> list[str]:
        return [str(column["name"]) for column in self.key_columns]


class Component(models.Model):
    key = models.CharField(max_length=16, unique=True)
    title = models.CharField(max_length=200)
    entity_type = models.ForeignKey(EntityType, on_delete=models.PROTECT, related_name="components")
    # The owning team; approvals of changes to this component need one of its members.
    owner = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="components")

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    @property
    def table_name(self) -> str:
        return f"{self.key}_features"


class Feature(models.Model):
    """A feature as applied in one environment. Its storage schema history is in FeatureVersion."""

    class Status(models.TextChoices):
        ACTIVE = "active", "active"
        DEPRECATED = "deprecated", "deprecated"

    environment = models.ForeignKey(Environment, on_delete=models.PROTECT, related_name="features")
    component = models.ForeignKey(Component, on_delete=models.PROTECT, related_name="features")
    name = models.CharField(max_length=128)
    dtype = models.CharField(max_length=16)
    description = models.TextField(blank=True)
    ttl_seconds = models.PositiveIntegerField()
    online = models.BooleanField(default=False)
    source = models.CharField(max_length=256)
    tags = models.JSONField(default=list)
    owner = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="features")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    version = models.PositiveIntegerField(default=1)
    # The column that holds the current version's values (`name` for v1, `name__v2` after a breaking change).
    column_name = models.CharField(max_length=140)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["component__key", "name"]
        constraints = [
            models.UniqueConstraint(fields=["environment", "name"], name="unique_feature_name_per_env"),
            # Sources map to one active feature; a deprecated feature keeps its source for lineage.
            models.UniqueConstraint(
                fields=["environment", "source"],
                condition=models.Q(status="active"),
                name="unique_active_source_per_env",
            ),
        ]
        indexes = [
            models.Index(fields=["environment", "component", "name"]),
            models.Index(fields=["environment", "status", "online"]),
        ]

    def __str__(self) -> str:
        return f"{self.environment}:{self.name}"


class FeatureVersion(ImmutableModel):
    """An immutable storage version of a feature: created with the feature and by every breaking change."""

    feature = models.ForeignKey(Feature, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    dtype = models.CharField(max_length=16)
    column_name = models.CharField(max_length=140)
    definition = models.JSONField()
    change_request = models.ForeignKey(
        "catalog.ChangeRequest", null=True, blank=True, on_delete=models.PROTECT, related_name="feature_versions"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["feature", "version"]
        constraints = [models.UniqueConstraint(fields=["feature", "version"], name="unique_feature_version")]

    def __str__(self) -> str:
        return f"{self.feature.name} v{self.version}"
