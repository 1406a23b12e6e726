"""Provisioning: runs with live step progress, backfills, drift and costs.

Run and backfill pages poll a progress fragment with htmx while the work is live; the fragment answers 286
(htmx: stop polling) once it is finished, so a finished page stops asking.
"""

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from catalog import roles, selectors
from catalog.errors import ApplicationError
from catalog.forms import BackfillForm
from catalog.models import Environment
from catalog.views.common import environments, form_errors, paginate, refusals_audited, service_error
from provisioning import backfill as backfill_service
from provisioning.costs import environment_costs
from provisioning.drift import drift_detect
from provisioning.errors import StoreError
from provisioning.models import Backfill, ProvisioningRun
from provisioning.services import provisioning_run_retry as run_retry_service

# htmx stops polling an element when its request is answered with this status.
HTMX_STOP_POLLING = 286
LIVE_BACKFILL = (Backfill.State.PENDING, Backfill.State.RUNNING)


def env_or_all(request: HttpRequest) -> Environment | None:
    name = request.GET.get("env", "")
    return selectors.environment_pick(name) if name else None


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    environment = env_or_all(request)
    state = request.GET.get("state", "")
    state = state if state in ProvisioningRun.State.values else ""
    context = {
        "environment": environment,
        "environments": environments(),
        "states": ProvisioningRun.State.values,
        "state": state,
        "page": paginate(request, selectors.runs(environment, state)),
    }
    return render(request, "console/provisioning/run_list.html", context)


@login_required
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = selectors.run_get(pk)
    context = {
        "run": run,
        "environment": run.environment,
        "may_retry": run.state == ProvisioningRun.State.FAILED and _may_retry(request.user),
        "progress": selectors.run_progress(run),
        "planned": selectors.planned_steps(run),
        "backfills": run.backfills.order_by("id"),
    }
    return render(request, "console/provisioning/run_detail.html", context)


@refusals_audited
@login_required
@require_POST
def run_retry(request: HttpRequest, pk: int) -> HttpResponse:
    """The API's retry (provisioning_run_retry): admins and reviewers put a failed run back in the queue."""
    selectors.run_get(pk)
    try:
        run_retry_service(user=request.user, run_id=pk)
    except ApplicationError as error:
        service_error(request, error)
    else:
        messages.success(request, f"Run #{pk} queued again; it resumes at its first unfinished step.")
    return redirect("console:run-detail", pk=pk)


@login_required
@require_GET
def run_progress(request: HttpRequest, pk: int) -> HttpResponse:
    progress = selectors.run_progress(selectors.run_get(pk))
    response = render(request, "console/partials/run_progress.html", {"progress": progress})
    if not progress.live:
        response.status_code = HTMX_STOP_POLLING
    return response


def _may_retry(user: Any) -> bool:
    return roles.is_admin(user) or roles.is_reviewer(user)


def _may_request_backfill(user: Any) -> tuple[bool, str]:
    """Who is offered the form; backfill_request checks the components' owning teams again."""
    if roles.is_admin(user) or roles.is_reviewer(user) or roles.team_slugs(user):
        return True, ""
    return False, "only admins, reviewers and members of the owning teams may start backfills"


def _may_cancel(user: Any, backfill: Backfill) -> bool:
    return backfill_service.backfill_may_cancel(user, backfill)


@login_required
@require_GET
def backfill_list(request: HttpRequest) -> HttpResponse:
    environment = env_or_all(request)
    state = request.GET.get("state", "")
    state = state if state in Backfill.State.values else ""
    allowed, reason = _may_request_backfill(request.user)
    page = paginate(request, selectors.backfills(environment, state))
    context = {
        "environment": environment,
        "environments": environments(),
        "states": Backfill.State.values,
        "state": state,
        "page": page,
        "rows": [(b, backfill_service.backfill_progress(b)) for b in page.object_list],
        "may_request": allowed,
        "request_reason": reason,
        "form": BackfillForm(initial={"environment": environment.name if environment else "dev"}),
    }
    return render(request, "console/provisioning/backfill_list.html", context)


@refusals_audited
@login_required
@require_POST
def backfill_start(request: HttpRequest) -> HttpResponse:
    form = BackfillForm(request.POST)
    if not form.is_valid():
        form_errors(request, form)
        return redirect(reverse("console:backfill-list") + "#start")
    data = form.cleaned_data
    try:
        backfill = backfill_service.backfill_request(
            user=request.user,
            environment_name=data["environment"],
            source=data["source"],
            start_date=data["start_date"],
            end_date=data["end_date"],
            components=data["components"] or None,
            reason=data["reason"] or "requested from the console",
        )
    except ApplicationError as error:
        service_error(request, error)
        return redirect(reverse("console:backfill-list") + "#start")
    messages.success(request, f"Backfill {backfill.pk} checked against the catalog and queued.")
    return redirect("console:backfill-detail", pk=backfill.pk)


def _backfill_context(request: HttpRequest, backfill: Backfill) -> dict[str, Any]:
    return {
        "backfill": backfill,
        "progress": backfill_service.backfill_progress(backfill),
        "live": backfill.state in LIVE_BACKFILL,
        "may_cancel": backfill.state in LIVE_BACKFILL
        and not backfill.cancel_requested
        and _may_cancel(request.user, backfill),
    }


@login_required
@require_GET
def backfill_detail(request: HttpRequest, pk: int) -> HttpResponse:
    backfill = selectors.backfill_get(pk)
    context = {
        **_backfill_context(request, backfill),
        "environment": backfill.environment,
        "partitions": backfill.partitions.order_by("component", "partition_date")[:500],
    }
    return render(request, "console/provisioning/backfill_detail.html", context)


@login_required
@require_GET
def backfill_progress(request: HttpRequest, pk: int) -> HttpResponse:
    context = _backfill_context(request, selectors.backfill_get(pk))
    response = render(request, "console/partials/backfill_progress.html", context)
    if not context["live"]:
        response.status_code = HTMX_STOP_POLLING
    return response


@refusals_audited
@login_required
@require_POST
def backfill_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    selectors.backfill_get(pk)
    try:
        backfill_service.backfill_cancel(user=request.user, backfill_id=pk)
    except ApplicationError as error:
        service_error(request, error)
    else:
        messages.success(request, f"Backfill {pk}: cancel requested; it stops after the partition job in progress.")
    return redirect("console:backfill-detail", pk=pk)


@login_required
@require_GET
def drift(request: HttpRequest) -> HttpResponse:
    reports = []
    for environment in environments():
        report = selectors.drift_latest(environment)
        reports.append(
            {
                "environment": environment,
                "report": report,
                "groups": selectors.drift_grouped(report) if report else [],
            }
        )
    return render(request, "console/provisioning/drift.html", {"reports": reports})


@refusals_audited
@login_required
@require_POST
def drift_run(request: HttpRequest, env: str) -> HttpResponse:
    """Compares the live stores with the catalog now (any signed-in user may, as in the API: it only reads the
    stores and records what it found)."""
    environment = selectors.environment_pick(env)
    report = drift_detect(environment=environment, trigger="on_demand")
    if report.error:
        messages.error(request, f"Drift in {environment.name}: the stores could not be read: {report.error}")
    elif report.consistent:
        messages.success(request, f"Drift in {environment.name}: none. The stores match the catalog.")
    else:
        messages.warning(request, f"Drift in {environment.name}: {len(report.findings)} finding(s).")
    return redirect(reverse("console:drift") + f"#drift-{environment.name}")


@login_required
@require_GET
def costs(request: HttpRequest) -> HttpResponse:
    environment = selectors.environment_pick(request.GET.get("env"))
    per_environment: list[dict[str, Any]] = []
    selected: dict[str, Any] | None = None
    error = ""
    for candidate in environments():
        if candidate.revision == 0:
            per_environment.append({"environment": candidate.name, "costs": None, "error": "nothing applied yet"})
            continue
        try:
            data = environment_costs(candidate)
        except StoreError as failure:
            per_environment.append({"environment": candidate.name, "costs": None, "error": str(failure)})
            if candidate.pk == environment.pk:
                error = str(failure)
            continue
        per_environment.append({"environment": candidate.name, "costs": data, "error": ""})
        if candidate.pk == environment.pk:
            selected = data
    changes = selectors.applied_change_costs(environment)
    chart_data = _chart_data(selected, per_environment, changes)
    context = {
        "environment": environment,
        "environments": environments(),
        "costs": selected,
        "error": error,
        "per_environment": per_environment,
        "changes": changes,
        "chart_data": chart_data,
        "components": chart_data["by_component"],
    }
    return render(request, "console/provisioning/costs.html", context)


def _chart_data(
    selected: dict[str, Any] | None, per_environment: list[dict[str, Any]], changes: list[dict[str, Any]]
) -> dict[str, Any]:
    """Plain series for the charts (the tables under them show the same numbers)."""
    tables = selected["tables"] if selected else []
    by_component: dict[str, dict[str, float]] = {}
    for table in tables:
        entry = by_component.setdefault(table["component"] or table["table"], {"bytes": 0, "usd": 0.0})
        entry["bytes"] += table["bytes"]
        entry["usd"] += table["storage_usd_per_month"]
    return {
        "by_table": {
            "labels": [t["table"] for t in tables],
            "bytes": [t["bytes"] for t in tables],
            "usd": [t["storage_usd_per_month"] for t in tables],
        },
        "by_component": {
            "labels": list(by_component),
            "bytes": [v["bytes"] for v in by_component.values()],
            "usd": [round(v["usd"], 6) for v in by_component.values()],
        },
        "by_environment": {
            "labels": [e["environment"] for e in per_environment],
            "bytes": [e["costs"]["storage_bytes"] if e["costs"] else 0 for e in per_environment],
            "usd": [e["costs"]["storage_usd_per_month"] if e["costs"] else 0 for e in per_environment],
        },
        "online": {
            "labels": [e["environment"] for e in per_environment if e["costs"]],
            "range": [
                [e["costs"]["online_usd_per_month"]["min"], e["costs"]["online_usd_per_month"]["max"]]
                for e in per_environment
                if e["costs"]
            ],
        },
        "changes": {
            "labels": [c["label"] for c in changes],
            "storage_usd_per_month": [c["storage_usd_per_month"] for c in changes],
            "backfill_scan_usd": [c["backfill_scan_usd"] for c in changes],
            "online_usd_per_month": [c["online_usd_per_month"] for c in changes],
        },
    }
