"""The state the stores must have, derived from an environment's catalog (never hand-written)."""

from collections.abc import Mapping, Sequence
from typing import Any

from django.db.models import Prefetch

from catalog import rules
from catalog.models import Component, Environment, Feature, FeatureVersion
from provisioning.ddl import KEY_COLUMNS, SOURCE_SUFFIX, Column, TableSpec, online_source_view_sql, training_view_sql
from provisioning.offline.base import LiveTable
from provisioning.online.base import OnlineFeature, OnlineViewSpec

ONLINE_VIEW_NAME = "instrument_minute_online"


def component_table(environment: Environment, component: Component, features: list[Feature] | None = None) -> TableSpec:
    """Key columns, then every column any version of any feature of the component has had (data is never
    dropped silently: deprecated features and earlier versions keep their columns)."""
    if features is None:
        features = list(
            Feature.objects.filter(environment=environment, component=component)
            .select_related("owner")
            .prefetch_related(Prefetch("versions", FeatureVersion.objects.order_by("version")))
            .order_by("id")
        )
    columns = [Column(name, type_, description, required=True) for name, type_, description in KEY_COLUMNS]
    for feature in features:
        for version in feature.versions.all():
            current = version.version == feature.version
            dtype = feature.dtype if current else version.dtype
            description = feature.description if current else f"{feature.name} version {version.version} (superseded)."
            if feature.status == Feature.Status.DEPRECATED and current:
                description = f"DEPRECATED. {description}"
            columns.append(Column(version.column_name, rules.DTYPES[dtype].bigquery, description[:1024]))
    owner = features[0].owner.slug if features else component.owner.slug
    return TableSpec(
        name=component.table_name,
        columns=tuple(columns),
        description=f"{component.key}: {component.title} features of {component.entity_type.name}, per minute.",
        labels=(("component", component.key), ("team", owner), ("environment", environment.name)),
    )


def all_tables(environment: Environment) -> dict[str, TableSpec]:
    features = (
        Feature.objects.filter(environment=environment)
        .select_related("owner", "component")
        .prefetch_related(Prefetch("versions", FeatureVersion.objects.order_by("version")))
        .order_by("id")
    )
    by_component: dict[int, list[Feature]] = {}
    for feature in features:
        by_component.setdefault(feature.component_id, []).append(feature)
    tables = {}
    for component in Component.objects.select_related("entity_type", "owner"):
        if component.pk in by_component:
            tables[component.key] = component_table(environment, component, by_component[component.pk])
    return tables


def ahead_of_stores(
    tables: Mapping[str, TableSpec], live: Mapping[str, LiveTable], plan_steps: Sequence[Mapping[str, Any]] = ()
) -> tuple[list[TableSpec], dict[str, list[Column]]]:
    """What the views of the current catalog need that neither the stores nor `plan_steps` provide: tables to
    create and columns to add. Runs execute in revision order but the catalog moves at approval, so a run whose
    environment has newer approved revisions sees their features: it creates their tables and columns (nullable,
    additive, idempotent) before replacing views, and the later run then finds them in place."""
    created = {step["component"] for step in plan_steps if step["kind"] == "create_table"}
    added = {(s["table"], c["name"]) for s in plan_steps if s["kind"] == "add_columns" for c in s["columns"]}
    to_create: list[TableSpec] = []
    to_add: dict[str, list[Column]] = {}
    for component, table in tables.items():
        if component in created:
            continue
        current = live.get(table.name)
        if current is None:
            to_create.append(table)
            continue
        missing = [c for c in table.columns if current.column(c.name) is None and (table.name, c.name) not in added]
        if missing:
            to_add[table.name] = missing
    return to_create, to_add


def training_view(environment: Environment) -> str:
    selections: dict[str, list[tuple[str, str]]] = {}
    active = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE).order_by(
        "component__key", "id"
    )
    for table, column, name in active.values_list("component__key", "column_name", "name"):
        selections.setdefault(f"{table}_features", []).append((column, name))
    return training_view_sql(environment.gcp_project, environment.bigquery_dataset, list(selections.items()))


def online_view(environment: Environment) -> OnlineViewSpec:
    """The 32 online features served, and every feature of the catalog registered (active and deprecated: a
    deprecated feature keeps its column; the online store never unregisters one)."""
    features = (
        Feature.objects.filter(environment=environment).select_related("component").order_by("component__key", "name")
    )
    served: list[OnlineFeature] = []
    registered: list[OnlineFeature] = []
    for f in features:
        feature = OnlineFeature(name=f.name, dtype=f.dtype, ttl_seconds=f.ttl_seconds, component=f.component.key)
        registered.append(feature)
        if f.online and f.status == Feature.Status.ACTIVE:
            served.append(feature)
    return OnlineViewSpec(
        name=ONLINE_VIEW_NAME,
        entity_type="instrument_minute",
        features=tuple(sorted(served, key=lambda f: f.name)),
        options={"id_template": "${symbol}_${yyyymmddHHMM}_${dte}"},
        registered=tuple(registered),
    )


def online_source_views(environment: Environment) -> dict[str, str]:
    """View name -> BigQuery statement: per component, the current column of every feature of its catalog
    under the feature's name, keyed by the catalog's entity id (what its Vertex AI feature group reads), for
    the rows within the serving window: the longest TTL of the component's online features (what a feature view
    sync reads), or of all its features when none is online."""
    columns: dict[str, list[tuple[str, str]]] = {}
    online_windows: dict[str, int] = {}
    all_windows: dict[str, int] = {}
    features = Feature.objects.filter(environment=environment).order_by("component__key", "name")
    for component, column, name, ttl, online, status in features.values_list(
        "component__key", "column_name", "name", "ttl_seconds", "online", "status"
    ):
        columns.setdefault(component, []).append((column, name))
        all_windows[component] = max(all_windows.get(component, 0), ttl)
        if online and status == Feature.Status.ACTIVE:
            online_windows[component] = max(online_windows.get(component, 0), ttl)
    return {
        f"{component}{SOURCE_SUFFIX}": online_source_view_sql(
            environment.gcp_project,
            environment.bigquery_dataset,
            component,
            selected,
            online_windows.get(component) or all_windows[component],
        )
        for component, selected in sorted(columns.items())
    }
