"""Governance writes. Each runs in one transaction, validates, writes audit rows and enqueues work on commit."""

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from catalog import plans, roles, rules
from catalog.audit import audit_log_write, audit_log_write_many, audit_refusal
from catalog.errors import Conflict, NotFound, PermissionDenied, Problem, SpecValidationError
from catalog.models import (
    AppliedRevision,
    Approval,
    ChangeRequest,
    Component,
    EntityType,
    Environment,
    Feature,
    FeatureVersion,
    Team,
)
from catalog.specs import CatalogContext, ComponentSpec, load_spec_files, specs_as_dicts, validate_submission
from provisioning.costs import plan_cost

logger = logging.getLogger(__name__)

PROMOTION_ORDER = ("dev", "staging", "prod")


@dataclass(frozen=True)
class PlanResult:
    specs: list[ComponentSpec]
    plan: dict[str, Any]
    plan_hash: str


@dataclass(frozen=True)
class SubmitResult:
    change_request: ChangeRequest | None
    plan: dict[str, Any]


def environment_get(name: str) -> Environment:
    try:
        return Environment.objects.get(name=name)
    except Environment.DoesNotExist:
        known = ", ".join(Environment.objects.values_list("name", flat=True))
        raise NotFound(
            f"environment {name!r} does not exist",
            problems=[
                Problem("environment", "unknown_environment", f"environment {name!r} does not exist; known: {known}")
            ],
        ) from None


_COMPONENT_KEY = re.compile(r"[a-z][a-z0-9_]{0,15}")


def _component_keys(payload: Any) -> set[str]:
    """The well-formed component keys a payload names. Validation reports the others; they must not reach a
    query (a NUL or an unpaired surrogate makes the database driver raise)."""
    raw_specs = payload.get("specs") if isinstance(payload, dict) else None
    if not isinstance(raw_specs, list):
        return set()
    keys = (s.get("component") for s in raw_specs if isinstance(s, dict))
    return {k for k in keys if isinstance(k, str) and _COMPONENT_KEY.fullmatch(k)}


def _catalog_context(environment: Environment, replacing: set[str]) -> CatalogContext:
    others = Feature.objects.filter(environment=environment).exclude(component__key__in=replacing)
    other_names: dict[str, str] = {}
    other_sources: dict[str, str] = {}
    other_columns = 0
    for name, source, status, component in others.values_list("name", "source", "status", "component__key"):
        other_names[name] = f"{component}.{name}"
        if status == Feature.Status.ACTIVE:
            other_sources[source] = f"{component}.{name}"
        other_columns += 1
    # Columns of earlier versions stay in their tables: their names stay taken.
    retained: dict[str, int] = {}
    versions = FeatureVersion.objects.filter(feature__environment=environment).values_list(
        "feature__component__key", "feature__name", "column_name", "feature__version", "version"
    )
    for component, name, column, current, version in versions:
        if version != current:
            if component in replacing:
                retained[component] = retained.get(component, 0) + 1
            else:
                other_columns += 1
            # The column keeps its name taken, except for the feature still named so: after a breaking dtype change
            # a feature's version 1 column is its own name, and resubmitting that feature is no clash.
            if column != name:
                other_names.setdefault(column, f"{component}.{name} (version {version} column)")
    for component, count in (
        Feature.objects.filter(environment=environment, component__key__in=replacing, status=Feature.Status.DEPRECATED)
        .values_list("component__key")
        .order_by()
        .annotate(n=Count("id"))
    ):
        retained[component] = retained.get(component, 0) + count
    return CatalogContext(
        teams=frozenset(Team.objects.values_list("slug", flat=True)),
        entity_types=frozenset(EntityType.objects.values_list("name", flat=True)),
        components={c.key: c.entity_type.name for c in Component.objects.select_related("entity_type")},
        other_names=other_names,
        other_sources=other_sources,
        retained_columns=retained,
        other_component_columns=other_columns,
    )


def _environment_state(environment: Environment, keys: set[str]) -> dict[str, plans.ComponentState]:
    features: dict[str, list[plans.FeatureState]] = {key: [] for key in keys}
    owners = roles.owning_teams(environment.pk, keys)
    rows = Feature.objects.filter(environment=environment, component__key__in=keys).values_list(
        "component__key",
        "name",
        "dtype",
        "description",
        "ttl_seconds",
        "online",
        "source",
        "tags",
        "owner__slug",
        "status",
        "version",
        "column_name",
    )
    for component, *fields in rows:
        name, dtype, description, ttl, online, source, tags, owner, status, version, column = fields
        features[component].append(
            plans.FeatureState(
                name, dtype, description, ttl, online, source, tuple(tags), owner, status, version, column
            )
        )
    return {
        key: plans.ComponentState(key=key, owner=owners.get(key, ""), table_exists=bool(items), features=tuple(items))
        for key, items in features.items()
    }


def change_request_plan(*, environment: Environment, payload: Any) -> PlanResult:
    """Validates the specs and plans them against the environment's applied state. Writes nothing."""
    replacing = _component_keys(payload)
    specs, problems = validate_submission(payload, _catalog_context(environment, replacing))
    if problems:
        raise SpecValidationError(
            f"{len(problems)} problem(s) in the submitted specs; nothing was written", problems=problems
        )
    keys = {s.component for s in specs}
    online_elsewhere = list(
        Feature.objects.filter(environment=environment, online=True, status=Feature.Status.ACTIVE)
        .exclude(component__key__in=keys)
        .values_list("name", flat=True)
    )
    plan = plans.compute_plan(
        environment=environment.name,
        base_revision=environment.revision,
        dataset_exists=environment.revision > 0,
        specs=specs,
        state=_environment_state(environment, keys),
        online_features_elsewhere=online_elsewhere,
    )
    plan["cost"] = plan_cost(plan)
    return PlanResult(specs=specs, plan=plan, plan_hash=plans.plan_hash(plan))


def _cr_snapshot(cr: ChangeRequest) -> dict[str, Any]:
    return {
        "state": cr.state,
        "environment": cr.environment.name,
        "title": cr.title,
        "plan_hash": cr.plan_hash,
        "base_revision": cr.base_revision,
        "components": cr.components,
        "is_breaking": cr.is_breaking,
    }


def change_request_submit(
    *,
    user: Any,
    environment_name: str,
    title: str,
    description: str = "",
    payload: Any,
    supersedes_id: int | None = None,
    promoted_from: ChangeRequest | None = None,
) -> SubmitResult:
    environment = environment_get(environment_name)
    keys = sorted(_component_keys(payload))
    allowed, reason = roles.can_submit(user, keys, environment.pk)
    if not allowed:
        audit_refusal(
            actor=user,
            action="change_request.submit",
            object_type="environment",
            object_id=environment.name,
            reason=reason,
            environment=environment.name,
        )
        raise PermissionDenied(reason)
    with transaction.atomic():
        environment = Environment.objects.select_for_update().get(pk=environment.pk)
        result = change_request_plan(environment=environment, payload=payload)
        if result.plan["is_empty"]:
            return SubmitResult(change_request=None, plan=result.plan)
        cr = ChangeRequest.objects.create(
            environment=environment,
            title=title.strip()[:200] or f"Change to {', '.join(keys)} in {environment.name}",
            description=description,
            author=user,
            specs=specs_as_dicts(result.specs),
            plan=result.plan,
            plan_hash=result.plan_hash,
            base_revision=environment.revision,
            components=sorted(s.component for s in result.specs),
            is_breaking=bool(result.plan["is_breaking"]),
            promoted_from=promoted_from,
        )
        audit_log_write(
            actor=user,
            action="change_request.submit",
            object_type="change_request",
            object_id=cr.pk,
            environment=environment.name,
            after=_cr_snapshot(cr),
        )
        if supersedes_id is not None:
            older = ChangeRequest.objects.select_for_update().filter(pk=supersedes_id, environment=environment).first()
            if older is None or older.state != ChangeRequest.State.PROPOSED:
                raise Conflict(
                    f"change request {supersedes_id} is not a proposed change request in {environment.name}; "
                    "it cannot be superseded"
                )
            before = _cr_snapshot(older)
            older.state = ChangeRequest.State.SUPERSEDED
            older.superseded_by = cr
            older.save(update_fields=["state", "superseded_by", "updated_at"])
            audit_log_write(
                actor=user,
                action="change_request.supersede",
                object_type="change_request",
                object_id=older.pk,
                environment=environment.name,
                before=before,
                after=_cr_snapshot(older),
            )
    logger.info("change request submitted", extra={"change_request": cr.pk, "environment": environment.name})
    return SubmitResult(change_request=cr, plan=result.plan)


def _locked_change_request(change_request_id: int) -> ChangeRequest:
    try:
        return ChangeRequest.objects.select_for_update().select_related("environment").get(pk=change_request_id)
    except ChangeRequest.DoesNotExist:
        raise NotFound(f"change request {change_request_id} does not exist") from None


def _review_check(user: Any, change_request_id: int, action: str) -> None:
    cr = ChangeRequest.objects.select_related("environment").filter(pk=change_request_id).first()
    if cr is None:
        raise NotFound(f"change request {change_request_id} does not exist")
    allowed, reason = roles.can_review(user, cr)
    if not allowed:
        audit_refusal(
            actor=user,
            action=action,
            object_type="change_request",
            object_id=cr.pk,
            reason=reason,
            environment=cr.environment.name,
        )
        raise PermissionDenied(reason)


def change_request_approve(
    *, user: Any, change_request_id: int, comment: str = "", plan_hash: str | None = None
) -> tuple[ChangeRequest, list[str]]:
    """Records an approval of the exact plan; once the approvals suffice, applies it to the catalog.

    Returns the change request and what approvals are still missing (empty once applied). Refused with 409
    when the environment's revision moved since the plan was computed: the plan must be recomputed.
    """
    _review_check(user, change_request_id, "change_request.approve")
    try:
        with transaction.atomic():
            cr = _locked_change_request(change_request_id)
            environment = Environment.objects.select_for_update().get(pk=cr.environment_id)
            cr.environment = environment
            if cr.state != ChangeRequest.State.PROPOSED:
                raise Conflict(f"change request {cr.pk} is {cr.state}; only proposed change requests can be approved")
            if plan_hash and plan_hash != cr.plan_hash:
                raise Conflict("the plan changed since you reviewed it; review the current plan and approve again")
            if environment.revision != cr.base_revision:
                raise Conflict(
                    f"{environment.name} moved from revision {cr.base_revision} to {environment.revision} "
                    "since this plan "
                    "was computed; re-plan the change request and review it again",
                    extra={"base_revision": cr.base_revision, "current_revision": environment.revision},
                )
            if Approval.objects.filter(change_request=cr, user=user, plan_hash=cr.plan_hash).exists():
                raise Conflict("you already reviewed this plan")
            approval = Approval.objects.create(
                change_request=cr,
                user=user,
                decision=Approval.Decision.APPROVE,
                comment=comment,
                plan_hash=cr.plan_hash,
            )
            audit_log_write(
                actor=user,
                action="change_request.approve",
                object_type="change_request",
                object_id=cr.pk,
                environment=environment.name,
                after={"approval": approval.pk, "comment": comment, "plan_hash": cr.plan_hash},
            )
            approvers = set(
                cr.approvals.filter(decision=Approval.Decision.APPROVE, plan_hash=cr.plan_hash).values_list(
                    "user_id", flat=True
                )
            )
            missing = roles.approvals_missing(cr, approvers)
            if not missing:
                _apply_approved(cr, environment, user)
            return cr, missing
    except Conflict as error:
        audit_refusal(
            actor=user,
            action="change_request.approve",
            object_type="change_request",
            object_id=change_request_id,
            reason=error.message,
        )
        raise


def _apply_approved(cr: ChangeRequest, environment: Environment, user: Any) -> None:
    before = _cr_snapshot(cr)
    revision = plan_apply(environment=environment, plan=cr.plan, plan_hash=cr.plan_hash, change_request=cr, actor=user)
    cr.state = ChangeRequest.State.APPROVED
    cr.applied_revision = revision
    cr.save(update_fields=["state", "applied_revision", "updated_at"])
    audit_log_write(
        actor=user,
        action="change_request.approved",
        object_type="change_request",
        object_id=cr.pk,
        environment=environment.name,
        before=before,
        after=_cr_snapshot(cr),
    )


def change_request_reject(*, user: Any, change_request_id: int, comment: str) -> ChangeRequest:
    _review_check(user, change_request_id, "change_request.reject")
    with transaction.atomic():
        cr = _locked_change_request(change_request_id)
        if cr.state != ChangeRequest.State.PROPOSED:
            raise Conflict(f"change request {cr.pk} is {cr.state}; only proposed change requests can be rejected")
        if Approval.objects.filter(change_request=cr, user=user, plan_hash=cr.plan_hash).exists():
            raise Conflict("you already reviewed this plan")
        before = _cr_snapshot(cr)
        Approval.objects.create(
            change_request=cr, user=user, decision=Approval.Decision.REJECT, comment=comment, plan_hash=cr.plan_hash
        )
        cr.state = ChangeRequest.State.REJECTED
        cr.save(update_fields=["state", "updated_at"])
        audit_log_write(
            actor=user,
            action="change_request.reject",
            object_type="change_request",
            object_id=cr.pk,
            environment=cr.environment.name,
            before=before,
            after={**_cr_snapshot(cr), "comment": comment},
        )
    return cr


def change_request_replan(*, user: Any, change_request_id: int) -> ChangeRequest:
    """Recomputes the plan against the environment's current revision. Earlier approvals no longer count."""
    current = ChangeRequest.objects.select_related("environment").filter(pk=change_request_id).first()
    if current is None:
        raise NotFound(f"change request {change_request_id} does not exist")
    allowed, reason = roles.can_submit(user, current.components, current.environment_id)
    if not (allowed or current.author_id == user.pk):
        audit_refusal(
            actor=user,
            action="change_request.replan",
            object_type="change_request",
            object_id=current.pk,
            reason=reason,
            environment=current.environment.name,
        )
        raise PermissionDenied(reason)
    with transaction.atomic():
        cr = _locked_change_request(change_request_id)
        if cr.state != ChangeRequest.State.PROPOSED:
            raise Conflict(f"change request {cr.pk} is {cr.state}; only proposed change requests can be re-planned")
        environment = Environment.objects.select_for_update().get(pk=cr.environment_id)
        result = change_request_plan(environment=environment, payload={"specs": cr.specs})
        before = _cr_snapshot(cr)
        cr.plan = result.plan
        cr.plan_hash = result.plan_hash
        cr.base_revision = environment.revision
        cr.is_breaking = bool(result.plan["is_breaking"])
        cr.save(update_fields=["plan", "plan_hash", "base_revision", "is_breaking", "updated_at"])
        audit_log_write(
            actor=user,
            action="change_request.replan",
            object_type="change_request",
            object_id=cr.pk,
            environment=environment.name,
            before=before,
            after=_cr_snapshot(cr),
        )
    return cr


def change_request_promote(*, user: Any, change_request_id: int, target_environment: str | None = None) -> SubmitResult:
    source = ChangeRequest.objects.select_related("environment").filter(pk=change_request_id).first()
    if source is None:
        raise NotFound(f"change request {change_request_id} does not exist")
    if source.state != ChangeRequest.State.APPLIED:
        raise Conflict(f"change request {source.pk} is {source.state}; only applied change requests can be promoted")
    position = PROMOTION_ORDER.index(source.environment.name)
    if position + 1 >= len(PROMOTION_ORDER):
        raise Conflict(f"{source.environment.name} is the last environment; there is nothing to promote to")
    expected = PROMOTION_ORDER[position + 1]
    target = target_environment or expected
    if target != expected:
        raise Conflict(f"change requests in {source.environment.name} are promoted to {expected}, not {target}")
    return change_request_submit(
        user=user,
        environment_name=target,
        title=f"Promote CR-{source.pk} to {target}: {source.title}"[:200],
        description=source.description,
        payload={"specs": source.specs},
        promoted_from=source,
    )


def plan_apply(
    *, environment: Environment, plan: dict[str, Any], plan_hash: str, change_request: ChangeRequest | None, actor: Any
) -> int:
    """Applies a plan to the environment's catalog state and moves its revision. Caller holds the env lock."""
    from provisioning.services import provisioning_run_queue

    if plan["base_revision"] != environment.revision:
        raise Conflict(
            f"{environment.name} is at revision {environment.revision}, "
            f"the plan was computed against {plan['base_revision']}"
        )
    components = {c.key: c for c in Component.objects.filter(key__in=plan["components"])}
    teams = {t.slug: t for t in Team.objects.all()}
    features = {
        f.name: f
        for f in Feature.objects.select_for_update().filter(
            environment=environment, component__key__in=plan["components"]
        )
    }
    audits: list[dict[str, Any]] = []
    versions: list[FeatureVersion] = []
    applied: list[tuple[Feature, dict[str, Any], dict[str, Any] | None]] = []
    for change in plan["changes"]:
        definition = change["definition"]
        action = change["action"]
        if action == "deprecate":
            feature = features[change["feature"]]
            feature.status = Feature.Status.DEPRECATED
            feature.save(update_fields=["status", "updated_at"])
            audits.append(
                {
                    "action": "feature.deprecate",
                    "object_id": feature.pk,
                    "before": {"status": "active"},
                    "after": {"status": "deprecated"},
                }
            )
            continue
        existing = features.get(change.get("renamed_from") or change["feature"])
        before = _feature_snapshot(existing) if existing else None
        feature = existing or Feature(environment=environment, component=components[change["component"]])
        feature.name = definition["name"]
        feature.dtype = definition["dtype"]
        feature.description = definition["description"]
        feature.ttl_seconds = rules.ttl_parse(definition["ttl"]) or 0
        feature.online = definition["online"]
        feature.source = definition["source"]
        feature.tags = definition["tags"]
        feature.owner = teams[definition["owner"]]
        feature.status = Feature.Status.ACTIVE
        feature.version = change["version"]["new"]
        feature.column_name = change["column"]
        if existing is not None:
            feature.save()
        applied.append((feature, change, before))
    # A catalog load creates hundreds of features: one INSERT for all of them.
    Feature.objects.bulk_create([f for f, _, _ in applied if f.pk is None], batch_size=500)
    for feature, change, before in applied:
        if change["version"]["new"] != change["version"]["old"]:
            versions.append(
                FeatureVersion(
                    feature=feature,
                    version=feature.version,
                    dtype=feature.dtype,
                    column_name=feature.column_name,
                    definition=change["definition"],
                    change_request=change_request,
                    created_by=actor if getattr(actor, "is_authenticated", False) else None,
                )
            )
        audits.append(
            {
                "action": f"feature.{change['action']}",
                "object_id": feature.pk,
                "before": before,
                "after": _feature_snapshot(feature),
            }
        )
    for change in plan["component_changes"]:
        if change["field"] == "owner":
            Feature.objects.filter(environment=environment, component__key=change["component"]).update(
                owner=teams[change["new"]]
            )
            audits.append(
                {
                    "action": "component.owner",
                    "object_type": "component",
                    "object_id": change["component"],
                    "before": {"owner": change["old"]},
                    "after": {"owner": change["new"]},
                }
            )
    FeatureVersion.objects.bulk_create(versions)

    updated = Environment.objects.filter(pk=environment.pk, revision=environment.revision).update(
        revision=environment.revision + 1, updated_at=timezone.now()
    )
    if updated != 1:
        raise Conflict(f"{environment.name} moved while this plan was being applied; re-plan")
    environment.revision += 1
    AppliedRevision.objects.create(
        environment=environment,
        revision=environment.revision,
        change_request=change_request,
        plan_hash=plan_hash,
        applied_by=actor if getattr(actor, "is_authenticated", False) else None,
    )
    audit_log_write_many(
        actor=actor,
        environment=environment.name,
        entries=[{"object_type": "feature", **a} for a in audits]
        + [
            {
                "action": "environment.revision",
                "object_type": "environment",
                "object_id": environment.name,
                "before": {"revision": environment.revision - 1},
                "after": {
                    "revision": environment.revision,
                    "plan_hash": plan_hash,
                    "change_request": change_request.pk if change_request else None,
                },
            }
        ],
    )
    provisioning_run_queue(
        environment=environment,
        change_request=change_request,
        plan=plan,
        plan_hash=plan_hash,
        revision=environment.revision,
    )
    return environment.revision


def _feature_snapshot(feature: Feature) -> dict[str, Any]:
    return {
        "name": feature.name,
        "dtype": feature.dtype,
        "description": feature.description,
        "ttl": rules.ttl_format(feature.ttl_seconds),
        "online": feature.online,
        "source": feature.source,
        "tags": list(feature.tags),
        "owner": feature.owner.slug,
        "status": feature.status,
        "version": feature.version,
        "column": feature.column_name,
    }


def catalog_load(*, specs_dir: Path, environment_names: list[str]) -> dict[str, int | None]:
    """Brings environments to the spec files' state directly (bootstrap, `make run`). Safe to run again:
    an environment already matching the files is left alone. Audited as the system actor."""
    documents = load_spec_files(specs_dir)
    results: dict[str, int | None] = {}
    for name in environment_names:
        with transaction.atomic():
            environment = Environment.objects.select_for_update().get(name=name)
            result = change_request_plan(environment=environment, payload={"specs": documents})
            if result.plan["is_empty"]:
                results[name] = None
                continue
            results[name] = plan_apply(
                environment=environment, plan=result.plan, plan_hash=result.plan_hash, change_request=None, actor=None
            )
    return results
