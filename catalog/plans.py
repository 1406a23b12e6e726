"""Plans: what applying specs to an environment changes, computed without side effects.

A plan is plain JSON-able data. It lists each feature created, updated, renamed, deprecated or
reactivated, with `field: old -> new` lines and a classification (metadata-only, additive, breaking), and the
infrastructure steps the provisioning engine executes. Approval records the exact plan by its hash.
"""

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from catalog import rules
from catalog.specs import ComponentSpec, FeatureSpec

METADATA_ONLY = "metadata-only"
ADDITIVE = "additive"
BREAKING = "breaking"
_SEVERITY = {METADATA_ONLY: 0, ADDITIVE: 1, BREAKING: 2}


@dataclass(frozen=True)
class FeatureState:
    """A feature as applied in the environment (active or deprecated)."""

    name: str
    dtype: str
    description: str
    ttl_seconds: int
    online: bool
    source: str
    tags: tuple[str, ...]
    owner: str
    status: str
    version: int
    column_name: str


@dataclass(frozen=True)
class ComponentState:
    key: str
    owner: str
    table_exists: bool
    features: tuple[FeatureState, ...]


def _fmt(field: str, value: Any) -> Any:
    if field == "ttl_seconds":
        return rules.ttl_format(int(value))
    if field == "tags":
        return list(value)
    return value


_COMPARED = (
    # spec field, classification of a change to it
    ("description", METADATA_ONLY),
    ("tags", METADATA_ONLY),
    ("ttl_seconds", METADATA_ONLY),
    ("source", METADATA_ONLY),
)


def _column(name: str, dtype: str) -> dict[str, str]:
    return {"name": name, "type": rules.DTYPES[dtype].bigquery}


def _diff_feature(spec: FeatureSpec, state: FeatureState, owner: str) -> tuple[list[dict[str, Any]], str, list[str]]:
    """Field changes, the overall classification and the reasons for it."""
    fields: list[dict[str, Any]] = []
    classification = METADATA_ONLY
    reasons: list[str] = []

    def bump(level: str, reason: str) -> None:
        nonlocal classification
        if _SEVERITY[level] > _SEVERITY[classification]:
            classification = level
        reasons.append(reason)

    if spec.dtype != state.dtype:
        fields.append({"field": "dtype", "old": state.dtype, "new": spec.dtype})
        if (state.dtype, spec.dtype) in rules.WIDENINGS:
            bump(ADDITIVE, f"dtype widened in place ({state.dtype} -> {spec.dtype})")
        else:
            bump(BREAKING, f"dtype {state.dtype} -> {spec.dtype} is not a widening")
    if spec.online != state.online:
        fields.append({"field": "online", "old": state.online, "new": spec.online})
        if state.online:
            bump(BREAKING, "online -> offline removes it from the online feature view")
        else:
            bump(ADDITIVE, "added to the online feature view")
    for field, level in _COMPARED:
        old = getattr(state, field)
        new = getattr(spec, field)
        if old != new:
            fields.append({"field": field.removesuffix("_seconds"), "old": _fmt(field, old), "new": _fmt(field, new)})
            bump(level, f"{field.removesuffix('_seconds')} changed")
    return fields, classification, reasons


def _definition(spec: FeatureSpec, owner: str) -> dict[str, Any]:
    return {**spec.as_dict(), "owner": owner}


def compute_plan(
    *,
    environment: str,
    base_revision: int,
    dataset_exists: bool,
    specs: Sequence[ComponentSpec],
    state: Mapping[str, ComponentState],
    online_features_elsewhere: Sequence[str] = (),
) -> dict[str, Any]:
    """The plan for replacing the listed components' features with `specs`. Unchanged features are left out.

    `online_features_elsewhere`: the online features of components the specs do not touch, so the plan can
    state the full online feature set after it is applied.
    """
    changes: list[dict[str, Any]] = []
    component_changes: list[dict[str, Any]] = []
    steps: list[dict[str, Any]] = []
    online_after: list[str] = list(online_features_elsewhere)
    online_changed = False
    view_changed = False
    table_steps: list[dict[str, Any]] = []
    backfills: list[dict[str, Any]] = []

    if not dataset_exists:
        steps.append({"kind": "ensure_dataset"})

    for spec in sorted(specs, key=lambda s: s.component):
        current = state.get(spec.component, ComponentState(spec.component, spec.owner, False, ()))
        by_name = {f.name: f for f in current.features}
        spec_names = {f.name for f in spec.features}
        new_names = {f.name for f in spec.features if f.name not in by_name}
        # A removed active feature whose source a new feature now maps is a rename, not a removal and a create.
        renamed_from: dict[str, FeatureState] = {}
        new_by_source = {f.source: f.name for f in spec.features if f.name in new_names}
        for old in current.features:
            if old.status == "active" and old.name not in spec_names and old.source in new_by_source:
                renamed_from[new_by_source[old.source]] = old

        if current.owner != spec.owner and current.features:
            component_changes.append(
                {
                    "component": spec.component,
                    "field": "owner",
                    "old": current.owner,
                    "new": spec.owner,
                    "classification": METADATA_ONLY,
                }
            )

        added_columns: list[dict[str, str]] = []
        widened: list[dict[str, str]] = []
        component_changes_start = len(changes)
        for feature in spec.features:
            if feature.online:
                online_after.append(feature.name)
            old_state = by_name.get(feature.name)
            if feature.name in renamed_from:
                old_state = renamed_from[feature.name]
                version = old_state.version + 1
                column = rules.column_name(feature.name, version)
                fields, _, reasons = _diff_feature(feature, old_state, spec.owner)
                changes.append(
                    {
                        "component": spec.component,
                        "feature": feature.name,
                        "action": "rename",
                        "classification": BREAKING,
                        "fields": [{"field": "name", "old": old_state.name, "new": feature.name}, *fields],
                        "reasons": ["rename: a new column under the new name, filled by a backfill", *reasons],
                        "renamed_from": old_state.name,
                        "version": {"old": old_state.version, "new": version},
                        "column": column,
                        "definition": _definition(feature, spec.owner),
                    }
                )
                added_columns.append(_column(column, feature.dtype))
                backfills.append({"component": spec.component, "feature": feature.name, "column": column})
                online_changed = True  # the online store registers every feature (Vertex AI: one Feature each)
                continue
            if old_state is None:
                column = rules.column_name(feature.name, 1)
                changes.append(
                    {
                        "component": spec.component,
                        "feature": feature.name,
                        "action": "create",
                        "classification": ADDITIVE,
                        "fields": [
                            {"field": k, "old": None, "new": v}
                            for k, v in _definition(feature, spec.owner).items()
                            if k != "name"
                        ],
                        "reasons": ["new nullable column"],
                        "version": {"old": None, "new": 1},
                        "column": column,
                        "definition": _definition(feature, spec.owner),
                    }
                )
                added_columns.append(_column(column, feature.dtype))
                online_changed = True  # registered in the online store's registry, online or not
                continue
            fields, classification, reasons = _diff_feature(feature, old_state, spec.owner)
            action = "update"
            if old_state.status == "deprecated":
                action = "reactivate"
                fields.insert(0, {"field": "status", "old": "deprecated", "new": "active"})
                classification = max(classification, ADDITIVE, key=_SEVERITY.__getitem__)
                reasons.append("reactivated: its column was kept")
            if not fields:
                continue
            version = old_state.version
            column = old_state.column_name
            if classification == BREAKING and any(f["field"] == "dtype" for f in fields):
                version += 1
                column = rules.column_name(feature.name, version)
                added_columns.append(_column(column, feature.dtype))
                backfills.append({"component": spec.component, "feature": feature.name, "column": column})
            elif any(f["field"] == "dtype" for f in fields):
                widened.append(
                    {
                        "name": column,
                        "old": rules.DTYPES[old_state.dtype].bigquery,
                        "new": rules.DTYPES[feature.dtype].bigquery,
                    }
                )
            # The registry records every feature's dtype and TTL, and reads its current column.
            if any(f["field"] in ("online", "dtype", "ttl") for f in fields):
                online_changed = True
            changes.append(
                {
                    "component": spec.component,
                    "feature": feature.name,
                    "action": action,
                    "classification": classification,
                    "fields": fields,
                    "reasons": reasons,
                    "version": {"old": old_state.version, "new": version},
                    "column": column,
                    "definition": _definition(feature, spec.owner),
                }
            )
        renamed_old = {s.name for s in renamed_from.values()}
        for old in current.features:
            if old.status == "active" and old.name not in spec_names and old.name not in renamed_old:
                changes.append(
                    {
                        "component": spec.component,
                        "feature": old.name,
                        "action": "deprecate",
                        "classification": BREAKING,
                        "fields": [{"field": "status", "old": "active", "new": "deprecated"}],
                        "reasons": ["removed from the spec: deprecated, its column and data are kept"],
                        "version": {"old": old.version, "new": old.version},
                        "column": old.column_name,
                        "definition": None,
                    }
                )
                online_changed = online_changed or old.online

        table = f"{spec.component}_features"
        touched = len(changes) > component_changes_start or any(
            c["component"] == spec.component for c in component_changes
        )
        if not current.table_exists and spec.features:
            table_steps.append({"kind": "create_table", "component": spec.component, "table": table})
            view_changed = True
        elif current.table_exists:
            if added_columns:
                table_steps.append(
                    {"kind": "add_columns", "component": spec.component, "table": table, "columns": added_columns}
                )
                view_changed = True
            if widened:
                table_steps.append(
                    {"kind": "widen_columns", "component": spec.component, "table": table, "columns": widened}
                )
                view_changed = True
            if touched:
                table_steps.append({"kind": "update_table_metadata", "component": spec.component, "table": table})

    steps.extend(table_steps)
    if view_changed:
        steps.append({"kind": "replace_view", "view": "training_dataset"})
    if online_changed:
        steps.append({"kind": "update_online_store", "features": sorted(online_after)})
    for backfill in backfills:
        steps.append({"kind": "schedule_backfill", **backfill})

    summary = {
        "create": sum(1 for c in changes if c["action"] == "create"),
        "update": sum(1 for c in changes if c["action"] == "update"),
        "rename": sum(1 for c in changes if c["action"] == "rename"),
        "deprecate": sum(1 for c in changes if c["action"] == "deprecate"),
        "reactivate": sum(1 for c in changes if c["action"] == "reactivate"),
        METADATA_ONLY: sum(1 for c in changes if c["classification"] == METADATA_ONLY) + len(component_changes),
        ADDITIVE: sum(1 for c in changes if c["classification"] == ADDITIVE),
        BREAKING: sum(1 for c in changes if c["classification"] == BREAKING),
    }
    plan: dict[str, Any] = {
        "environment": environment,
        "base_revision": base_revision,
        "components": sorted(s.component for s in specs),
        "changes": changes,
        "component_changes": component_changes,
        "steps": steps,
        "summary": summary,
        "is_breaking": summary[BREAKING] > 0,
        "is_empty": not changes and not component_changes,
    }
    return plan


def plan_hash(plan: Mapping[str, Any]) -> str:
    """A stable hash of what a plan does (cost estimates excluded: prices may change, the plan does not)."""
    material = {k: v for k, v in plan.items() if k != "cost"}
    # The order of features in a spec says nothing about what the plan does: hash a canonical order.
    material["changes"] = sorted(plan["changes"], key=lambda c: (c["component"], c["feature"], c["action"]))
    steps = []
    for step in plan["steps"]:
        if "columns" in step:
            step = {**step, "columns": sorted(step["columns"], key=lambda c: c["name"])}
        steps.append(step)
    material["steps"] = sorted(steps, key=lambda s: (s["kind"] == "schedule_backfill", s.get("feature", "")))
    return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def usd_format(amount: float) -> str:
    """Dollars for people: cents, but small amounts keep four decimals instead of showing as $0.00."""
    if amount and abs(amount) < 0.01:
        return f"${amount:.4f}"
    return f"${amount:,.2f}"


def plan_text(plan: Mapping[str, Any]) -> str:
    """The plan as a human reads it in CI logs: one line per change and one per changed field."""
    marks = {"create": "+", "update": "~", "rename": "~", "reactivate": "+", "deprecate": "-"}
    lines = [f"Plan for {plan['environment']} (against revision {plan['base_revision']}):"]
    if plan["is_empty"]:
        lines.append("  No changes. The environment already matches these specs.")
        return "\n".join(lines)
    for change in plan["component_changes"]:
        lines.append(
            f"  ~ component {change['component']}: {change['field']}: {change['old']} -> {change['new']} "
            f"[{change['classification']}]"
        )
    for change in plan["changes"]:
        lines.append(
            f"  {marks[change['action']]} {change['component']}.{change['feature']} "
            f"({change['action']}, {change['classification']})"
        )
        if change["action"] != "create":
            for f in change["fields"]:
                lines.append(f"      {f['field']}: {json.dumps(f['old'])} -> {json.dumps(f['new'])}")
    lines.append("  Steps:")
    for step in plan["steps"]:
        target = step.get("table") or step.get("view") or step.get("column") or ""
        lines.append(f"    - {step['kind']} {target}".rstrip())
    summary = plan["summary"]
    lines.append(
        f"  {summary['create']} to create, {summary['update']} to update, {summary['rename']} to rename, "
        f"{summary['deprecate']} to deprecate, {summary['reactivate']} to reactivate; "
        f"{summary['breaking']} breaking."
    )
    cost = plan.get("cost")
    if cost:
        lines.append(
            f"  Cost: +{usd_format(cost['storage_usd_per_month'])}/month storage, "
            f"{usd_format(cost['backfill_scan_usd'])} one-off backfill scan, "
            f"+{usd_format(cost['online_usd_per_month'])}/month online serving."
        )
    return "\n".join(lines)
