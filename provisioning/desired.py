"""The state the stores must have, derived from an environment's catalog (never hand-written)."""

from django.db.models import Prefetch

from catalog import rules
from catalog.models import Component, Environment, Feature, FeatureVersion
from provisioning.ddl import KEY_COLUMNS, SOURCE_SUFFIX, Column, TableSpec, online_source_view_sql, training_view_sql
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


def training_view(environment: Environment) -> str:
    selections: dict[str, list[tuple[str, str]]] = {}
    active = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE).order_by(
        "component__key", "id"
    )
    for table, column, name in active.values_list("component__key", "column_name", "name"):
        selections.setdefault(f"{table}_features", []).append((column, name))
    return training_view_sql(environment.gcp_project, environment.bigquery_dataset, list(selections.items()))


def online_view(environment: Environment) -> OnlineViewSpec:
    online = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE, online=True).order_by("name")
    return OnlineViewSpec(
        name=ONLINE_VIEW_NAME,
        entity_type="instrument_minute",
        features=tuple(
            OnlineFeature(name=f.name, dtype=f.dtype, ttl_seconds=f.ttl_seconds, component=f.component.key)
            for f in online.select_related("component")
        ),
        options={"id_template": "${symbol}_${yyyymmddHHMM}_${dte}"},
    )


def online_source_views(environment: Environment) -> dict[str, str]:
    """View name -> BigQuery statement: per component with online features, the rows within the longest TTL
    keyed by the catalog's entity id (what a Vertex AI feature group reads)."""
    by_component: dict[str, list[tuple[str, str]]] = {}
    windows: dict[str, int] = {}
    online = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE, online=True).order_by("name")
    for component, column, name, ttl in online.values_list("component__key", "column_name", "name", "ttl_seconds"):
        by_component.setdefault(component, []).append((column, name))
        windows[component] = max(windows.get(component, 0), ttl)
    return {
        f"{component}{SOURCE_SUFFIX}": online_source_view_sql(
            environment.gcp_project, environment.bigquery_dataset, component, columns, windows[component]
        )
        for component, columns in sorted(by_component.items())
    }
