"""Lineage: Parquet source -> component -> feature -> BigQuery column and table -> training_dataset -> online
feature view, drawn with cytoscape.js; with a feature chosen, the impact view lists what reads it."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog import selectors
from catalog.models import Component, Feature
from catalog.views.common import environments


@login_required
@require_GET
def lineage(request: HttpRequest) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    feature_name = request.GET.get("feature", "").strip()
    component_key = request.GET.get("component", "").strip()
    feature: Feature | None = None
    component: Component | None = None
    if feature_name:
        feature = selectors.feature_get(environment, feature_name)
        component = feature.component
    elif component_key:
        component = selectors.component_get(component_key)
    graph = selectors.lineage_features(environment, component=component, feature=feature)
    context = {
        "environment": environment,
        "environments": environments(),
        "components": Component.objects.order_by("key"),
        "component": component,
        "feature": feature,
        "graph": graph,
        "readers": selectors.feature_readers(feature) if feature else [],
        "pending": selectors.feature_pending_changes(feature) if feature else [],
        "nodes": [e["data"] for e in graph["elements"] if e["group"] == "nodes"],
        "edges": [e["data"] for e in graph["elements"] if e["group"] == "edges"],
    }
    return render(request, "console/lineage.html", context)
