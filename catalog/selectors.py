"""Reads for the console: querysets and plain data its pages render. Writes are services, never here.

Every list is filtered and paginated in the database; nothing here loops over the whole catalog in Python, so
the pages stay fast with 100,000 features.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min, Q, QuerySet
from django.http import Http404
from django.urls import reverse

from catalog import rules
from catalog.models import AuditLogEntry, ChangeRequest, Component, Environment, Feature, Team
from provisioning.desired import ONLINE_VIEW_NAME as ONLINE_VIEW_NAME
from provisioning.models import (
    Backfill,
    DriftReport,
    OnlineSyncState,
    ProvisioningRun,
    ProvisioningStep,
    TrainingDataset,
)

DEFAULT_ENVIRONMENT = "dev"
TRAINING_VIEW = "training_dataset"
# Above this many features a component's lineage graph is cut (the feature filter narrows it instead).
LINEAGE_FEATURE_LIMIT = 300


def environment_pick(name: str | None) -> Environment:
    """The environment a page shows: the one asked for (404 when unknown), else dev, else the first."""
    if name:
        environment = Environment.objects.filter(name=name).first()
        if environment is None:
            raise Http404(f"environment {name!r} does not exist")
        return environment
    environment = Environment.objects.filter(name=DEFAULT_ENVIRONMENT).first() or Environment.objects.first()
    if environment is None:
        raise Http404("no environments: run `python manage.py migrate`")
    return environment


def bigquery_column(environment: Environment, component_key: str, column: str) -> str:
    return f"{environment.gcp_project}.{environment.bigquery_dataset}.{component_key}_features.{column}"


def bigquery_table(environment: Environment, component_key: str) -> str:
    return f"{environment.gcp_project}.{environment.bigquery_dataset}.{component_key}_features"


# Catalog


@dataclass(frozen=True)
class FeatureFilters:
    search: str = ""
    component: str = ""
    owner: str = ""
    online: str = ""  # "", "true" or "false"
    dtype: str = ""
    status: str = ""

    @classmethod
    def from_query(cls, query: Any) -> "FeatureFilters":
        def get(key: str, allowed: set[str] | None = None) -> str:
            value = str(query.get(key, "") or "").strip()[:200]
            return value if allowed is None or value in allowed else ""

        return cls(
            search=get("q"),
            component=get("component"),
            owner=get("owner"),
            online=get("online", {"true", "false"}),
            dtype=get("dtype", set(rules.DTYPES)),
            status=get("status", set(Feature.Status.values)),
        )

    @property
    def active(self) -> bool:
        return any((self.search, self.component, self.owner, self.online, self.dtype, self.status))


def feature_search(environment: Environment, filters: FeatureFilters) -> QuerySet[Feature]:
    """Features of an environment matching the filters, in (component, name) order, which the
    (environment, component, name) index serves."""
    queryset = Feature.objects.filter(environment=environment)
    if filters.search:
        text = filters.search
        queryset = queryset.filter(Q(name__icontains=text) | Q(description__icontains=text) | Q(source__icontains=text))
    if filters.component:
        queryset = queryset.filter(component__key=filters.component)
    if filters.owner:
        queryset = queryset.filter(owner__slug=filters.owner)
    if filters.online:
        queryset = queryset.filter(online=filters.online == "true")
    if filters.dtype:
        queryset = queryset.filter(dtype=filters.dtype)
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    return (
        queryset.select_related("component", "owner")
        .only(
            "id",
            "name",
            "dtype",
            "ttl_seconds",
            "online",
            "status",
            "version",
            "column_name",
            "component__key",
            "owner__slug",
            "environment_id",
        )
        .order_by("component_id", "name")
    )


def feature_get(environment: Environment, name: str) -> Feature:
    feature = (
        Feature.objects.select_related("environment", "component", "component__entity_type", "owner")
        .filter(environment=environment, name=name)
        .first()
    )
    if feature is None:
        raise Http404(f"no feature {name!r} in {environment.name}")
    return feature


def feature_history(feature: Feature, limit: int = 100) -> QuerySet[AuditLogEntry]:
    return AuditLogEntry.objects.filter(object_type="feature", object_id=str(feature.pk)).order_by("-id")[:limit]


def feature_pending_changes(feature: Feature) -> list[dict[str, Any]]:
    """Proposed change requests whose plan changes this feature (plans of proposed requests only: few)."""
    found = []
    proposed = ChangeRequest.objects.filter(
        environment_id=feature.environment_id, state=ChangeRequest.State.PROPOSED
    ).only("id", "title", "plan", "components")
    for cr in proposed:
        if feature.component.key not in (cr.components or []):
            continue
        for change in cr.plan.get("changes", []):
            if change.get("feature") == feature.name or change.get("renamed_from") == feature.name:
                found.append({"change_request": cr, "change": change})
    return found


def feature_readers(feature: Feature) -> list[dict[str, str]]:
    """What reads this feature: its column, the training view, the online feature view."""
    environment = feature.environment
    readers = [
        {
            "kind": "BigQuery column",
            "name": bigquery_column(environment, feature.component.key, feature.column_name),
            "how": f"stores version {feature.version} ({rules.DTYPES[feature.dtype].bigquery})"
            if feature.dtype in rules.DTYPES
            else f"stores version {feature.version}",
        }
    ]
    if feature.status == Feature.Status.ACTIVE:
        readers.append(
            {
                "kind": "BigQuery view",
                "name": f"{environment.gcp_project}.{environment.bigquery_dataset}.{TRAINING_VIEW}",
                "how": f"selects {feature.column_name} AS {feature.name}, joined on the entity key",
            }
        )
        if feature.online:
            readers.append(
                {
                    "kind": "Online feature view",
                    "name": ONLINE_VIEW_NAME,
                    "how": f"serves the latest value by entity id for {rules.ttl_format(feature.ttl_seconds)}",
                }
            )
    return readers


def component_summaries(environment: Environment) -> QuerySet[Component]:
    active = Q(features__environment=environment, features__status=Feature.Status.ACTIVE)
    return Component.objects.select_related("owner").annotate(
        active_features=Count("features", filter=active),
        online_features=Count("features", filter=active & Q(features__online=True)),
        deprecated_features=Count(
            "features", filter=Q(features__environment=environment, features__status=Feature.Status.DEPRECATED)
        ),
    )


def component_get(key: str) -> Component:
    component = Component.objects.select_related("owner", "entity_type").filter(key=key).first()
    if component is None:
        raise Http404(f"no component {key!r}")
    return component


def component_owner(environment: Environment, component: Component) -> str:
    """The team owning the component in this environment (its features' owner once applied)."""
    owner = (
        Feature.objects.filter(environment=environment, component=component, status=Feature.Status.ACTIVE)
        .values_list("owner__slug", flat=True)
        .first()
    )
    return owner or component.owner.slug


def team_summaries() -> QuerySet[Team]:
    return Team.objects.annotate(member_count=Count("memberships", distinct=True)).prefetch_related("components")


def team_get(slug: str) -> Team:
    team = Team.objects.filter(slug=slug).prefetch_related("memberships__user", "components").first()
    if team is None:
        raise Http404(f"no team {slug!r}")
    return team


def dtype_counts(environment: Environment, component: Component) -> list[dict[str, Any]]:
    rows = (
        Feature.objects.filter(environment=environment, component=component, status=Feature.Status.ACTIVE)
        .values("dtype")
        .annotate(n=Count("id"))
        .order_by("dtype")
    )
    return [{"dtype": row["dtype"], "n": row["n"]} for row in rows]


# Change requests


def change_requests(environment: Environment | None, states: list[str]) -> QuerySet[ChangeRequest]:
    queryset = ChangeRequest.objects.select_related("environment", "author").defer("specs", "plan")
    if environment is not None:
        queryset = queryset.filter(environment=environment)
    if states:
        queryset = queryset.filter(state__in=states)
    return queryset.order_by("-id")


def change_request_get(pk: int) -> ChangeRequest:
    cr = (
        ChangeRequest.objects.select_related("environment", "author", "promoted_from", "superseded_by")
        .prefetch_related("approvals__user")
        .filter(pk=pk)
        .first()
    )
    if cr is None:
        raise Http404(f"change request {pk} does not exist")
    return cr


@dataclass
class ComponentPlan:
    """One component's part of a plan, as the diff page shows it."""

    component: str
    changes: list[dict[str, Any]]
    component_changes: list[dict[str, Any]]
    steps: list[dict[str, Any]]
    breaking: int
    additive: int
    metadata: int


def plan_by_component(plan: dict[str, Any]) -> list[ComponentPlan]:
    """The plan's changes, component changes and table steps grouped by component, breaking changes first."""
    groups: dict[str, ComponentPlan] = {}

    def group(key: str) -> ComponentPlan:
        if key not in groups:
            groups[key] = ComponentPlan(key, [], [], [], 0, 0, 0)
        return groups[key]

    for change in plan.get("changes", []):
        entry = group(change["component"])
        entry.changes.append(change)
        if change["classification"] == "breaking":
            entry.breaking += 1
        elif change["classification"] == "additive":
            entry.additive += 1
        else:
            entry.metadata += 1
    for change in plan.get("component_changes", []):
        group(change["component"]).component_changes.append(change)
        group(change["component"]).metadata += 1
    for step in plan.get("steps", []):
        if step.get("component"):
            group(step["component"]).steps.append(step)
    order = {"breaking": 0, "additive": 1, "metadata-only": 2}
    for entry in groups.values():
        entry.changes.sort(key=lambda c: (order.get(c["classification"], 3), c["feature"]))
    return [groups[key] for key in sorted(groups)]


def plan_global_steps(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Steps that belong to no single component: the dataset, the training view, the online store."""
    return [step for step in plan.get("steps", []) if not step.get("component")]


# Provisioning


def runs(environment: Environment | None, state: str = "") -> QuerySet[ProvisioningRun]:
    queryset = ProvisioningRun.objects.select_related("environment", "change_request").defer(
        "plan", "change_request__plan", "change_request__specs"
    )
    if environment is not None:
        queryset = queryset.filter(environment=environment)
    if state:
        queryset = queryset.filter(state=state)
    return queryset.annotate(
        step_count=Count("steps"),
        steps_done=Count("steps", filter=Q(steps__status=ProvisioningStep.Status.SUCCEEDED)),
    ).order_by("-id")


def run_get(pk: int) -> ProvisioningRun:
    run = (
        ProvisioningRun.objects.select_related("environment", "change_request")
        .defer("change_request__plan", "change_request__specs")
        .filter(pk=pk)
        .first()
    )
    if run is None:
        raise Http404(f"provisioning run {pk} does not exist")
    return run


@dataclass
class RunProgress:
    run: ProvisioningRun
    steps: list[ProvisioningStep]
    total: int
    done: int
    failed: int
    current: ProvisioningStep | None
    live: bool
    change_request_state: str

    @property
    def percent(self) -> int:
        return round(100 * self.done / self.total) if self.total else 0


def run_progress(run: ProvisioningRun) -> RunProgress:
    """A run's steps as recorded so far. Before a worker claims it, the plan's steps are shown as pending."""
    steps = list(run.steps.order_by("index"))
    total = len(steps) or 1 + len(run.plan.get("steps", []))
    done = sum(1 for s in steps if s.status == ProvisioningStep.Status.SUCCEEDED)
    failed = sum(1 for s in steps if s.status == ProvisioningStep.Status.FAILED)
    current = next((s for s in steps if s.status == ProvisioningStep.Status.RUNNING), None)
    state = ""
    if run.change_request_id is not None:
        state = ChangeRequest.objects.filter(pk=run.change_request_id).values_list("state", flat=True).first() or ""
    live = run.state in (ProvisioningRun.State.QUEUED, ProvisioningRun.State.RUNNING)
    return RunProgress(run, steps, total, done, failed, current, live, state)


def planned_steps(run: ProvisioningRun) -> list[dict[str, Any]]:
    """What a queued run will do, before its step rows exist."""
    return [{"kind": "preflight"}, *run.plan.get("steps", [])]


def backfills(environment: Environment | None, state: str = "") -> QuerySet[Backfill]:
    queryset = Backfill.objects.select_related("environment", "requested_by", "provisioning_run")
    if environment is not None:
        queryset = queryset.filter(environment=environment)
    if state:
        queryset = queryset.filter(state=state)
    return queryset.order_by("-id")


def backfill_get(pk: int) -> Backfill:
    backfill = Backfill.objects.select_related("environment", "requested_by", "provisioning_run").filter(pk=pk).first()
    if backfill is None:
        raise Http404(f"backfill {pk} does not exist")
    return backfill


def training_datasets(environment: Environment | None, state: str = "") -> QuerySet[TrainingDataset]:
    queryset = TrainingDataset.objects.select_related("environment", "requested_by")
    if environment is not None:
        queryset = queryset.filter(environment=environment)
    if state:
        queryset = queryset.filter(state=state)
    return queryset.order_by("-id")


def training_dataset_get(pk: int) -> TrainingDataset:
    dataset = TrainingDataset.objects.select_related("environment", "requested_by").filter(pk=pk).first()
    if dataset is None:
        raise Http404(f"training dataset {pk} does not exist")
    return dataset


def drift_latest(environment: Environment) -> DriftReport | None:
    return DriftReport.objects.filter(environment=environment).first()


DRIFT_GROUPS = (
    ("missing", "In the catalog, missing from the stores", ("missing_",)),
    ("extra", "In the stores, not in the catalog", ("extra_",)),
    ("mismatch", "Different from the catalog", ("",)),
)


def drift_grouped(report: DriftReport) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for finding in report.findings:
        kind = str(finding.get("kind", ""))
        if kind.startswith("missing_"):
            groups["missing"].append(finding)
        elif kind.startswith("extra_"):
            groups["extra"].append(finding)
        else:
            groups["mismatch"].append(finding)
    return [{"key": key, "title": title, "findings": groups[key]} for key, title, _ in DRIFT_GROUPS if groups.get(key)]


def online_store_status(environment: Environment) -> dict[str, Any]:
    """What the console knows about the online store from its own records (no call to the store)."""
    step = (
        ProvisioningStep.objects.filter(
            run__environment=environment,
            kind="update_online_store",
            status=ProvisioningStep.Status.SUCCEEDED,
        )
        .select_related("run")
        .order_by("-finished_at")
        .first()
    )
    online = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE, online=True).count()
    # Freshness from the online sync's own records: the newest event time it has written, and when it last ran.
    syncs = OnlineSyncState.objects.filter(environment=environment)
    newest = max((s.watermark for s in syncs if s.watermark), default=None)
    last_sync = max((s.last_run_at for s in syncs if s.last_run_at), default=None)
    return {
        "view": ONLINE_VIEW_NAME,
        "last_update": step,
        "catalog_online": online,
        "newest_value": newest,
        "last_sync": last_sync,
    }


def home_summary(environment: Environment) -> dict[str, Any]:
    features = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE)
    counts = features.aggregate(total=Count("id"), online=Count("id", filter=Q(online=True)))
    return {
        "active_features": counts["total"],
        "online_features": counts["online"],
        "pending": change_requests(environment, [ChangeRequest.State.PROPOSED])[:10],
        "pending_count": ChangeRequest.objects.filter(
            environment=environment, state=ChangeRequest.State.PROPOSED
        ).count(),
        "runs": runs(environment)[:5],
        "backfills": backfills(environment)[:5],
        "drift": drift_latest(environment),
        "online": online_store_status(environment),
    }


def applied_change_costs(environment: Environment, limit: int = 50) -> list[dict[str, Any]]:
    """The cost each applied revision's plan added (its estimate), oldest first. Reads only the cost key."""
    rows = (
        ProvisioningRun.objects.filter(environment=environment)
        .order_by("-revision")
        .values("id", "revision", "state", "change_request_id", "change_request__title", "plan__cost")[:limit]
    )
    out = []
    for row in reversed(list(rows)):
        cost = row["plan__cost"] or {}
        label = f"r{row['revision']}" + (f" CR-{row['change_request_id']}" if row["change_request_id"] else " load")
        out.append(
            {
                "label": label,
                "revision": row["revision"],
                "run": row["id"],
                "state": row["state"],
                "change_request": row["change_request_id"],
                "title": row["change_request__title"] or "catalog load (spec files)",
                "storage_bytes_added": int(cost.get("storage_bytes_added") or 0),
                "storage_usd_per_month": float(cost.get("storage_usd_per_month") or 0),
                "backfill_scan_usd": float(cost.get("backfill_scan_usd") or 0),
                "online_usd_per_month": float(cost.get("online_usd_per_month") or 0),
            }
        )
    return out


# Lineage

LAYER_X = {"source": 0, "component": 260, "feature": 520, "column": 800, "table": 1100, "view": 1360, "online": 1360}
OVERVIEW_X = {"source": 0, "component": 300, "table": 600, "view": 900}
ROW = 34


def _node(node_id: str, label: str, kind: str, x: float, y: float, **extra: Any) -> dict[str, Any]:
    return {
        "group": "nodes",
        "data": {"id": node_id, "label": label, "kind": kind, **extra},
        "position": {"x": x, "y": y},
    }


def _edge(source: str, target: str) -> dict[str, Any]:
    return {"group": "edges", "data": {"id": f"{source}->{target}", "source": source, "target": target}}


def _parquet_dataset(source: str) -> str:
    return source.split(".", 1)[0] if "." in source else source


def lineage_overview(environment: Environment) -> dict[str, Any]:
    """Parquet dataset -> component -> table -> training_dataset / online view, one row per component."""
    rows = list(
        Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE)
        .values("component__key", "component__title")
        .annotate(n=Count("id"), online=Count("id", filter=Q(online=True)), sample=Min("source"))
        .order_by("component__key")
    )
    elements: list[dict[str, Any]] = []
    middle = (len(rows) - 1) * ROW
    view_id, online_id = f"view:{TRAINING_VIEW}", f"online:{ONLINE_VIEW_NAME}"
    for i, row in enumerate(rows):
        key, y = row["component__key"], i * ROW * 2
        dataset = _parquet_dataset(row["sample"] or key)
        source_id, component_id, table_id = f"parquet:{dataset}", f"component:{key}", f"table:{key}"
        component_href = reverse("console:component-detail", args=[key]) + f"?env={environment.name}"
        lineage_href = reverse("console:lineage") + f"?env={environment.name}&component={key}"
        elements += [
            _node(source_id, f"{dataset} (Parquet)", "source", OVERVIEW_X["source"], y, href=lineage_href),
            _node(
                component_id,
                f"{key} · {row['n']} features",
                "component",
                OVERVIEW_X["component"],
                y,
                href=component_href,
                title=row["component__title"],
            ),
            _node(table_id, f"{key}_features", "table", OVERVIEW_X["table"], y, title=bigquery_table(environment, key)),
            _edge(source_id, component_id),
            _edge(component_id, table_id),
            _edge(table_id, view_id),
        ]
        if row["online"]:
            elements.append(_edge(table_id, online_id))
    if rows:
        elements.append(_node(view_id, TRAINING_VIEW, "view", OVERVIEW_X["view"], middle - ROW * 2))
        if any(row["online"] for row in rows):
            elements.append(_node(online_id, ONLINE_VIEW_NAME, "online", OVERVIEW_X["view"], middle + ROW * 2))
    return {"elements": elements, "truncated": False, "total": sum(r["n"] for r in rows), "focus": ""}


def lineage_features(
    environment: Environment, *, component: Component | None = None, feature: Feature | None = None
) -> dict[str, Any]:
    """Per feature: Parquet source column -> component -> feature -> BigQuery column -> table ->
    training_dataset, and -> online feature view for online features. One component, or one feature."""
    if feature is not None:
        queryset = Feature.objects.filter(pk=feature.pk)
    elif component is not None:
        queryset = Feature.objects.filter(
            environment=environment, component=component, status=Feature.Status.ACTIVE
        ).order_by("name")
    else:
        return lineage_overview(environment)
    total = queryset.count()
    selected = list(
        queryset.select_related("component").only(
            "id", "name", "source", "online", "status", "column_name", "dtype", "component__key", "component__title"
        )[:LINEAGE_FEATURE_LIMIT]
    )
    elements: list[dict[str, Any]] = []
    if not selected:
        return {"elements": elements, "truncated": False, "total": 0, "focus": ""}
    key = selected[0].component.key
    middle = (len(selected) - 1) * ROW / 2
    component_id, table_id = f"component:{key}", f"table:{key}"
    view_id, online_id = f"view:{TRAINING_VIEW}", f"online:{ONLINE_VIEW_NAME}"
    elements.append(
        _node(
            component_id,
            f"{key} · {selected[0].component.title}",
            "component",
            LAYER_X["component"],
            middle,
            href=reverse("console:component-detail", args=[key]) + f"?env={environment.name}",
        )
    )
    elements.append(
        _node(table_id, f"{key}_features", "table", LAYER_X["table"], middle, title=bigquery_table(environment, key))
    )
    any_active = any(f.status == Feature.Status.ACTIVE for f in selected)
    any_online = any(f.online and f.status == Feature.Status.ACTIVE for f in selected)
    if any_active:
        elements.append(_node(view_id, TRAINING_VIEW, "view", LAYER_X["view"], middle - ROW))
        elements.append(_edge(table_id, view_id))
    if any_online:
        elements.append(_node(online_id, ONLINE_VIEW_NAME, "online", LAYER_X["online"], middle + ROW * 2))
    for i, item in enumerate(selected):
        y = i * ROW
        source_id, feature_id = f"source:{item.source}", f"feature:{item.name}"
        column_id = f"column:{key}.{item.column_name}"
        href = reverse("console:feature-detail", args=[environment.name, item.name])
        elements += [
            _node(source_id, item.source, "source", LAYER_X["source"], y, title=f"Parquet column of {item.source}"),
            _node(feature_id, item.name, "feature", LAYER_X["feature"], y, href=href, dtype=item.dtype),
            _node(
                column_id,
                item.column_name,
                "column",
                LAYER_X["column"],
                y,
                title=bigquery_column(environment, key, item.column_name),
            ),
            # The feature is computed by its component from its own source column.
            _edge(source_id, feature_id),
            _edge(component_id, feature_id),
            _edge(feature_id, column_id),
            _edge(column_id, table_id),
        ]
        if item.online and item.status == Feature.Status.ACTIVE:
            elements.append(_edge(column_id, online_id))
    focus = f"feature:{feature.name}" if feature is not None else ""
    return {"elements": elements, "truncated": total > len(selected), "total": total, "focus": focus}
