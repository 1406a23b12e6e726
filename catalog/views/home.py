"""Home: one environment at a glance (pending change requests, runs, backfills, training datasets, drift, online
store)."""

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog import selectors
from catalog.selectors import training_datasets
from catalog.views.common import environments
from catalog.views.training import training_rows
from provisioning.backfill import backfill_progress


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    summary = selectors.home_summary(environment)
    context = {
        "environment": environment,
        "environments": environments(),
        "summary": summary,
        "backfill_rows": [(b, backfill_progress(b)) for b in summary["backfills"]],
        "training_rows": training_rows(training_datasets(environment)[:5]),
    }
    return render(request, "console/home.html", context)
