"""Display helpers for the console's templates (one module, as healthchecks keeps its front-end helpers)."""

import json
from datetime import datetime
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from catalog import rules
from catalog.plans import usd_format

register = template.Library()

# State words of change requests, runs, steps, backfills and partitions -> one of a few looks.
STATE_LOOK = {
    "proposed": "pending",
    "queued": "pending",
    "pending": "pending",
    "approved": "progress",
    "applying": "progress",
    "running": "progress",
    "applied": "ok",
    "succeeded": "ok",
    "done": "ok",
    "active": "ok",
    "rejected": "bad",
    "failed": "bad",
    "mismatch": "bad",
    "superseded": "muted",
    "cancelled": "muted",
    "deprecated": "muted",
    "breaking": "bad",
    "additive": "progress",
    "metadata-only": "muted",
}
ACTION_MARK = {"create": "+", "reactivate": "+", "update": "~", "rename": "~", "deprecate": "-"}


@register.simple_tag
def state_badge(state: Any) -> SafeString:
    text = str(state or "")
    return format_html('<span class="badge badge-{}">{}</span>', STATE_LOOK.get(text, "muted"), text)


@register.filter
def action_mark(action: str) -> str:
    return ACTION_MARK.get(action, "·")


@register.filter
def ttl(seconds: int | None) -> str:
    return rules.ttl_format(int(seconds)) if seconds else "—"


@register.filter
def bq_column(feature: Any) -> str:
    environment = feature.environment
    return (
        f"{environment.gcp_project}.{environment.bigquery_dataset}.{feature.component.key}_features."
        f"{feature.column_name}"
    )


@register.filter
def plan_value(value: Any) -> str:
    """A plan field's old or new value as a person reads it."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) if value else "(none)"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


@register.filter
def usd(value: Any) -> str:
    try:
        amount = float(value)
    except (TypeError, ValueError):
        return "—"
    return usd_format(amount)


@register.filter
def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str)


@register.simple_tag
def duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


@register.filter
def step_target(step: dict[str, Any]) -> str:
    return str(step.get("table") or step.get("view") or step.get("column") or step.get("component") or "")


@register.filter
def get_item(mapping: Any, key: str) -> Any:
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.simple_tag(takes_context=True)
def nav_link(context: dict[str, Any], url_name: str, label: str, section: str) -> SafeString:
    """A main-menu link, marked as the current page when the resolved view belongs to its section."""
    from django.urls import reverse

    request = context.get("request")
    match = getattr(request, "resolver_match", None)
    current = getattr(match, "url_name", "") or ""
    is_current = current == section or current.startswith(section + "-") if section else False
    if section == "home":
        is_current = current == "home"
    if is_current:
        return format_html('<a href="{}" aria-current="page">{}</a>', reverse(url_name), label)
    return format_html('<a href="{}">{}</a>', reverse(url_name), label)


@register.filter
def get_item_at(sequence: Any, index: int) -> Any:
    try:
        return sequence[int(index)]
    except (IndexError, TypeError, ValueError):
        return None


@register.filter
def thousands(value: Any) -> str:
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)
