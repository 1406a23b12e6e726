"""Who may do what. Roles are Django groups (viewer, registrar, reviewer) plus team membership and superusers."""

from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from catalog.models import ChangeRequest, Component, Feature, Team

VIEWER = "viewer"
REGISTRAR = "registrar"
REVIEWER = "reviewer"
ROLES = (VIEWER, REGISTRAR, REVIEWER)

AnyUser = AbstractBaseUser | AnonymousUser


def _groups(user: Any) -> set[str]:
    cache = getattr(user, "_fcc_groups", None)
    if cache is None:
        cache = set(user.groups.values_list("name", flat=True)) if user.is_authenticated else set()
        user._fcc_groups = cache
    return cache


def is_admin(user: Any) -> bool:
    return bool(user.is_authenticated and user.is_superuser)


def is_registrar(user: Any) -> bool:
    return REGISTRAR in _groups(user)


def is_reviewer(user: Any) -> bool:
    return REVIEWER in _groups(user)


def team_slugs(user: Any) -> set[str]:
    if not user.is_authenticated:
        return set()
    return set(Team.objects.filter(memberships__user=user).values_list("slug", flat=True))


def owning_teams(environment_id: int, component_keys: Iterable[str]) -> dict[str, str]:
    """component -> the team owning it in this environment (its features' owner, else the component's)."""
    keys = list(component_keys)
    owners = {c.key: c.owner.slug for c in Component.objects.filter(key__in=keys).select_related("owner")}
    applied = (
        Feature.objects.filter(environment_id=environment_id, component__key__in=keys, status=Feature.Status.ACTIVE)
        .values_list("component__key", "owner__slug")
        .distinct()
    )
    for key, owner in applied:
        owners[key] = owner
    return owners


def can_submit(user: Any, component_keys: Iterable[str], environment_id: int) -> tuple[bool, str]:
    if not user.is_authenticated:
        return False, "sign in to submit change requests"
    if is_admin(user) or is_registrar(user):
        return True, ""
    owners = owning_teams(environment_id, component_keys)
    mine = team_slugs(user)
    missing = sorted(key for key, team in owners.items() if team not in mine)
    if missing:
        return (
            False,
            f"only the registrar, an admin or members of the owning teams may submit changes to {', '.join(missing)}",
        )
    return True, ""


def can_review(user: Any, change_request: ChangeRequest) -> tuple[bool, str]:
    """Whether the user may approve or reject this change request, and why not when not."""
    if not user.is_authenticated:
        return False, "sign in to review"
    if change_request.author_id == user.pk:
        return False, "the author of a change request never reviews it"
    if is_registrar(user):
        return False, "a registrar (CI identity) may submit and read, never approve"
    if is_admin(user) or is_reviewer(user):
        return True, ""
    owners = owning_teams(change_request.environment_id, change_request.components)
    if set(owners.values()) & team_slugs(user):
        return True, ""
    return False, "only reviewers, admins and members of an owning team may review this change request"


def approvals_missing(change_request: ChangeRequest, approver_ids: set[int]) -> list[str]:
    """What is still needed before the plan can be applied; empty when the approvals suffice."""
    from django.contrib.auth import get_user_model

    missing = []
    required = change_request.environment.breaking_approvals_required if change_request.is_breaking else 1
    if len(approver_ids) < required:
        if change_request.is_breaking:
            environment, have = change_request.environment.name, len(approver_ids)
            missing.append(f"{required} distinct approvers (breaking change in {environment}); have {have}")
        else:
            missing.append("an approval")
    owners = owning_teams(change_request.environment_id, change_request.components)
    user_model = get_user_model()
    member_teams = set(
        Team.objects.filter(memberships__user__in=user_model.objects.filter(pk__in=approver_ids)).values_list(
            "slug", flat=True
        )
    )
    for component, team in sorted(owners.items()):
        if team not in member_teams:
            missing.append(f"an approval from a member of {team} (owns {component})")
    return missing
