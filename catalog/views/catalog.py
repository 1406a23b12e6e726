"""The catalog: features (list with search and filters, detail), components and teams."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog import rules, selectors
from catalog.models import Component, Feature, Team
from catalog.views.common import environments, paginate


@login_required
@require_GET
def feature_list(request: HttpRequest) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    filters = selectors.FeatureFilters.from_query(request.GET)
    page = paginate(request, selectors.feature_search(environment, filters))
    context = {
        "environment": environment,
        "environments": environments(),
        "filters": filters,
        "page": page,
        "components": Component.objects.order_by("key"),
        "teams": Team.objects.order_by("slug"),
        "dtypes": list(rules.DTYPES),
        "statuses": Feature.Status.values,
    }
    return render(request, "console/catalog/feature_list.html", context)


@login_required
@require_GET
def feature_detail(request: HttpRequest, env: str, name: str) -> HttpResponse:
    environment = selectors.environment_pick(env)
    feature = selectors.feature_get(environment, name)
    context = {
        "environment": environment,
        "feature": feature,
        "versions": feature.versions.select_related("change_request", "created_by").order_by("-version"),
        "history": selectors.feature_history(feature),
        "readers": selectors.feature_readers(feature),
        "pending": selectors.feature_pending_changes(feature),
        "bigquery_column": selectors.bigquery_column(environment, feature.component.key, feature.column_name),
        "online_view": selectors.ONLINE_VIEW_NAME,
        "graph": selectors.lineage_features(environment, feature=feature),
        "other_environments": Feature.objects.filter(name=feature.name)
        .exclude(environment=environment)
        .select_related("environment")
        .only("id", "version", "status", "environment__name"),
    }
    return render(request, "console/catalog/feature_detail.html", context)


@login_required
@require_GET
def component_list(request: HttpRequest) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    context = {
        "environment": environment,
        "environments": environments(),
        "components": selectors.component_summaries(environment),
    }
    return render(request, "console/catalog/component_list.html", context)


@login_required
@require_GET
def component_detail(request: HttpRequest, key: str) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    component = selectors.component_get(key)
    features = selectors.feature_search(environment, selectors.FeatureFilters(component=component.key))
    summary = selectors.component_summaries(environment).get(pk=component.pk)
    context = {
        "environment": environment,
        "environments": environments(),
        "component": component,
        "summary": summary,
        "owner": selectors.component_owner(environment, component),
        "table": selectors.bigquery_table(environment, component.key),
        "dtypes": selectors.dtype_counts(environment, component),
        "page": paginate(request, features),
        "change_requests": selectors.change_requests(environment, []).filter(components__icontains=f'"{key}"')[:10],
    }
    return render(request, "console/catalog/component_detail.html", context)


@login_required
@require_GET
def team_list(request: HttpRequest) -> HttpResponse:
    return render(request, "console/catalog/team_list.html", {"teams": selectors.team_summaries()})


@login_required
@require_GET
def team_detail(request: HttpRequest, slug: str) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    team = selectors.team_get(slug)
    features = selectors.feature_search(environment, selectors.FeatureFilters(owner=team.slug))
    context = {
        "environment": environment,
        "environments": environments(),
        "team": team,
        "memberships": team.memberships.select_related("user").order_by("-role", "user__username"),
        "page": paginate(request, features),
    }
    return render(request, "console/catalog/team_detail.html", context)
