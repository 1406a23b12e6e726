from typing import Any

from rest_framework import serializers

from catalog import roles, rules
from catalog.models import Approval, AuditLogEntry, ChangeRequest, Component, Environment, Feature, FeatureVersion, Team
from provisioning.models import ProvisioningRun


class EnvironmentSerializer(serializers.ModelSerializer[Environment]):
    bigquery_dataset = serializers.CharField(read_only=True)

    class Meta:
        model = Environment
        fields = [
            "name",
            "gcp_project",
            "region",
            "bigquery_dataset",
            "revision",
            "breaking_approvals_required",
            "updated_at",
        ]


class TeamMemberSerializer(serializers.Serializer[Any]):
    username = serializers.CharField(source="user.username")
    role = serializers.CharField()


class TeamSerializer(serializers.ModelSerializer[Team]):
    members = TeamMemberSerializer(source="memberships", many=True, read_only=True)
    components: Any = serializers.SlugRelatedField(many=True, read_only=True, slug_field="key")

    class Meta:
        model = Team
        fields = ["slug", "name", "members", "components"]


class ComponentSerializer(serializers.ModelSerializer[Component]):
    entity_type = serializers.CharField(source="entity_type.name")
    owner = serializers.CharField(source="owner.slug")
    table_name = serializers.CharField(read_only=True)
    # Counted with `?environment=`; null without it.
    active_features = serializers.IntegerField(read_only=True, allow_null=True)
    online_features = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = Component
        fields = ["key", "title", "entity_type", "owner", "table_name", "active_features", "online_features"]


class FeatureSerializer(serializers.ModelSerializer[Feature]):
    environment = serializers.CharField(source="environment.name")
    component = serializers.CharField(source="component.key")
    owner = serializers.CharField(source="owner.slug")
    ttl = serializers.SerializerMethodField()
    bigquery_column = serializers.SerializerMethodField()

    class Meta:
        model = Feature
        fields = [
            "id",
            "environment",
            "component",
            "name",
            "dtype",
            "description",
            "ttl",
            "ttl_seconds",
            "online",
            "source",
            "tags",
            "owner",
            "status",
            "version",
            "column_name",
            "bigquery_column",
            "updated_at",
        ]

    def get_ttl(self, obj: Feature) -> str:
        return rules.ttl_format(obj.ttl_seconds)

    def get_bigquery_column(self, obj: Feature) -> str:
        env = obj.environment
        return f"{env.gcp_project}.{env.bigquery_dataset}.{obj.component.table_name}.{obj.column_name}"


class FeatureVersionSerializer(serializers.ModelSerializer[FeatureVersion]):
    created_by = serializers.CharField(source="created_by.username", default=None, allow_null=True)

    class Meta:
        model = FeatureVersion
        fields = ["version", "dtype", "column_name", "definition", "change_request", "created_by", "created_at"]


class AuditLogEntrySerializer(serializers.ModelSerializer[AuditLogEntry]):
    class Meta:
        model = AuditLogEntry
        fields = [
            "id",
            "at",
            "actor_name",
            "action",
            "object_type",
            "object_id",
            "environment",
            "before",
            "after",
            "request_id",
            "job_id",
            "prev_hash",
            "entry_hash",
        ]


class FeatureDetailSerializer(FeatureSerializer):
    versions = FeatureVersionSerializer(many=True, read_only=True)
    history = serializers.SerializerMethodField()

    class Meta(FeatureSerializer.Meta):
        fields = [*FeatureSerializer.Meta.fields, "versions", "history"]

    def get_history(self, obj: Feature) -> list[dict[str, Any]]:
        entries = AuditLogEntry.objects.filter(object_type="feature", object_id=str(obj.pk)).order_by("id")[:200]
        return list(AuditLogEntrySerializer(entries, many=True).data)


class ApprovalSerializer(serializers.ModelSerializer[Approval]):
    user = serializers.CharField(source="user.username")
    current = serializers.SerializerMethodField()

    class Meta:
        model = Approval
        fields = ["user", "decision", "comment", "plan_hash", "current", "created_at"]

    def get_current(self, obj: Approval) -> bool:
        return obj.plan_hash == obj.change_request.plan_hash


class ChangeRequestSerializer(serializers.ModelSerializer[ChangeRequest]):
    environment = serializers.CharField(source="environment.name")
    author = serializers.CharField(source="author.username")
    summary = serializers.SerializerMethodField()

    class Meta:
        model = ChangeRequest
        fields = [
            "id",
            "environment",
            "title",
            "author",
            "state",
            "components",
            "is_breaking",
            "base_revision",
            "applied_revision",
            "plan_hash",
            "summary",
            "promoted_from",
            "superseded_by",
            "created_at",
            "updated_at",
        ]

    def get_summary(self, obj: ChangeRequest) -> dict[str, int]:
        return dict(obj.plan.get("summary", {}))


class ReviewSerializer(serializers.Serializer[Any]):
    can_review = serializers.BooleanField()
    reason = serializers.CharField()
    missing = serializers.ListField(child=serializers.CharField())


class ChangeRequestDetailSerializer(ChangeRequestSerializer):
    approvals = ApprovalSerializer(many=True, read_only=True)
    review = serializers.SerializerMethodField()
    provisioning_runs: Any = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta(ChangeRequestSerializer.Meta):
        fields = [
            *ChangeRequestSerializer.Meta.fields,
            "description",
            "failure_reason",
            "plan",
            "specs",
            "approvals",
            "review",
            "provisioning_runs",
        ]

    def get_review(self, obj: ChangeRequest) -> dict[str, Any]:
        """Whether the requesting user may review it, and what the approvals still lack."""
        request = self.context.get("request")
        allowed, reason = roles.can_review(request.user, obj) if request else (False, "")
        approvers = {a.user_id for a in obj.approvals.all() if a.decision == "approve" and a.plan_hash == obj.plan_hash}
        missing = roles.approvals_missing(obj, approvers) if obj.state == ChangeRequest.State.PROPOSED else []
        if obj.state != ChangeRequest.State.PROPOSED:
            allowed, reason = False, f"the change request is {obj.state}"
        return {"can_review": allowed, "reason": reason, "missing": missing}


class SpecsField(serializers.JSONField):
    """The component specs; validated by catalog.specs with located errors, not by the serializer."""


class ChangeRequestCreateSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices)
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    description = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    specs = SpecsField(help_text="A list of component specs: component, entity_type, owner, features[].")
    supersedes = serializers.IntegerField(required=False, allow_null=True, default=None)


class PlanRequestSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices)
    specs = SpecsField()


class PlanResponseSerializer(serializers.Serializer[Any]):
    plan = serializers.JSONField()
    plan_hash = serializers.CharField()
    text = serializers.CharField()


class SubmitResponseSerializer(serializers.Serializer[Any]):
    change_request = ChangeRequestDetailSerializer(allow_null=True)
    plan = serializers.JSONField()
    text = serializers.CharField()


class ApproveSerializer(serializers.Serializer[Any]):
    comment = serializers.CharField(max_length=10_000, required=False, allow_blank=True, default="")
    plan_hash = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")


class ApproveResponseSerializer(serializers.Serializer[Any]):
    change_request = ChangeRequestDetailSerializer()
    missing = serializers.ListField(child=serializers.CharField())


class RejectSerializer(serializers.Serializer[Any]):
    comment = serializers.CharField(max_length=10_000)


class PromoteSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices, required=False)


class ProvisioningRunSerializer(serializers.ModelSerializer[ProvisioningRun]):
    environment = serializers.CharField(source="environment.name")

    class Meta:
        model = ProvisioningRun
        fields = [
            "id",
            "environment",
            "revision",
            "change_request",
            "state",
            "plan_hash",
            "attempts",
            "claimed_by",
            "claimed_at",
            "heartbeat_at",
            "finished_at",
            "error",
            "created_at",
        ]


class ProvisioningRunDetailSerializer(ProvisioningRunSerializer):
    class Meta(ProvisioningRunSerializer.Meta):
        fields = [*ProvisioningRunSerializer.Meta.fields, "plan"]
