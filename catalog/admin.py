from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from catalog.models import (
    AppliedRevision,
    Approval,
    AuditLogEntry,
    ChangeRequest,
    Component,
    EntityType,
    Environment,
    Feature,
    FeatureVersion,
    Team,
    TeamMembership,
)


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    """Visible in the admin, never editable there: its rows are written by services only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TeamMembershipInline(admin.TabularInline[TeamMembership, Team]):
    model = TeamMembership
    extra = 0


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin[Team]):
    list_display = ["slug", "name"]
    inlines = [TeamMembershipInline]


@admin.register(Environment)
class EnvironmentAdmin(ReadOnlyAdmin):
    list_display = ["name", "gcp_project", "region", "revision", "breaking_approvals_required"]


@admin.register(EntityType)
class EntityTypeAdmin(admin.ModelAdmin[EntityType]):
    list_display = ["name", "id_template"]


@admin.register(Component)
class ComponentAdmin(admin.ModelAdmin[Component]):
    list_display = ["key", "title", "owner", "entity_type"]


@admin.register(Feature)
class FeatureAdmin(ReadOnlyAdmin):
    list_display = ["name", "environment", "component", "dtype", "online", "status", "version", "owner"]
    list_filter = ["environment", "component", "online", "status", "dtype"]
    search_fields = ["name", "source", "description"]
    list_select_related = ["environment", "component", "owner"]


@admin.register(FeatureVersion)
class FeatureVersionAdmin(ReadOnlyAdmin):
    list_display = ["feature", "version", "dtype", "column_name", "created_at"]
    list_select_related = ["feature"]


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ReadOnlyAdmin):
    list_display = ["id", "title", "environment", "author", "state", "is_breaking", "created_at"]
    list_filter = ["environment", "state", "is_breaking"]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["change_request", "user", "decision", "created_at"]


@admin.register(AppliedRevision)
class AppliedRevisionAdmin(ReadOnlyAdmin):
    list_display = ["environment", "revision", "change_request", "applied_by", "applied_at"]


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(ReadOnlyAdmin):
    list_display = ["at", "actor_name", "action", "object_type", "object_id", "environment"]
    list_filter = ["action", "object_type", "environment"]
    search_fields = ["object_id", "actor_name", "action"]
