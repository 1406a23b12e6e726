"""Change requests: the list with state filters, the plan as a diff, and review (approve or reject).

Review forms are offered only when roles.can_review allows; the services check again and their refusals are
shown as messages. POSTs redirect back to the detail page (a reload never repeats a decision).
"""

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from catalog import roles, selectors, services
from catalog.errors import ApplicationError
from catalog.forms import ApproveForm, RejectForm
from catalog.models import Approval, ChangeRequest, Environment
from catalog.views.common import environments, form_errors, paginate, refusals_audited, service_error
from provisioning.models import ProvisioningRun


@login_required
@require_GET
def change_request_list(request: HttpRequest) -> HttpResponse:
    env_name = request.GET.get("env", "")
    environment = selectors.environment_pick(env_name) if env_name else None
    states = [s for s in request.GET.getlist("state") if s in ChangeRequest.State.values]
    context = {
        "environment": environment,
        "environments": environments(),
        "states": ChangeRequest.State.values,
        "selected_states": states,
        "page": paginate(request, selectors.change_requests(environment, states)),
    }
    return render(request, "console/change_requests/list.html", context)


def _review_panel(user: Any, cr: ChangeRequest) -> dict[str, Any]:
    """What the review panel offers this user, and why not when it offers nothing."""
    allowed, reason = roles.can_review(user, cr)
    current = [a for a in cr.approvals.all() if a.plan_hash == cr.plan_hash]
    mine = next((a for a in current if a.user_id == user.pk), None)
    approvers = {a.user_id for a in current if a.decision == Approval.Decision.APPROVE}
    panel: dict[str, Any] = {"allowed": False, "reason": reason, "mine": mine, "missing": []}
    if cr.state == ChangeRequest.State.PROPOSED:
        panel["missing"] = roles.approvals_missing(cr, approvers)
    if cr.state != ChangeRequest.State.PROPOSED:
        panel["reason"] = f"this change request is {cr.state}; reviews are closed"
    elif not allowed:
        pass
    elif mine is not None:
        panel["reason"] = f"you already {mine.get_decision_display()}d this plan"
    elif cr.base_revision != cr.environment.revision:
        panel["reason"] = (
            f"{cr.environment.name} moved from revision {cr.base_revision} to {cr.environment.revision} since "
            "this plan was computed; it must be re-planned before review"
        )
    else:
        panel["allowed"] = True
        panel["reason"] = ""
    return panel


@login_required
@require_GET
def change_request_detail(request: HttpRequest, pk: int) -> HttpResponse:
    cr = selectors.change_request_get(pk)
    plan = cr.plan
    user: Any = request.user
    may_submit, _ = roles.can_submit(user, cr.components, cr.environment_id)
    run = ProvisioningRun.objects.filter(change_request=cr).defer("plan").order_by("-id").first()
    next_env = {"dev": "staging", "staging": "prod"}.get(cr.environment.name, "")
    context = {
        "cr": cr,
        "environment": cr.environment,
        "plan": plan,
        "groups": selectors.plan_by_component(plan),
        "global_steps": selectors.plan_global_steps(plan),
        "cost": plan.get("cost") or {},
        "summary": plan.get("summary") or {},
        "approvals": list(cr.approvals.all()),
        "review": _review_panel(user, cr),
        "approve_form": ApproveForm(initial={"plan_hash": cr.plan_hash}),
        "reject_form": RejectForm(),
        "can_replan": cr.state == ChangeRequest.State.PROPOSED
        and cr.base_revision != cr.environment.revision
        and (may_submit or cr.author_id == user.pk),
        "can_promote": cr.state == ChangeRequest.State.APPLIED and bool(next_env) and may_submit,
        "next_environment": next_env,
        "run": selectors.run_progress(run) if run is not None else None,
    }
    return render(request, "console/change_requests/detail.html", context)


def _back(cr_id: int, anchor: str = "") -> HttpResponseRedirect:
    return redirect(reverse("console:change-request-detail", args=[cr_id]) + anchor)


@refusals_audited
@login_required
@require_POST
def change_request_approve(request: HttpRequest, pk: int) -> HttpResponse:
    cr = selectors.change_request_get(pk)
    form = ApproveForm(request.POST)
    if not form.is_valid():
        form_errors(request, form)
        return _back(cr.pk, "#review")
    try:
        cr, missing = services.change_request_approve(
            user=request.user,
            change_request_id=cr.pk,
            comment=form.cleaned_data["comment"],
            plan_hash=form.cleaned_data["plan_hash"] or None,
        )
    except ApplicationError as error:
        service_error(request, error)
        return _back(cr.pk, "#review")
    if missing:
        messages.info(request, f"Your approval of CR-{cr.pk} is recorded. Still needed: {'; '.join(missing)}.")
        return _back(cr.pk, "#review")
    messages.success(
        request,
        f"CR-{cr.pk} approved and applied to {cr.environment.name} as revision {cr.applied_revision}; "
        "a provisioning run is queued.",
    )
    return _back(cr.pk, "#run")


@refusals_audited
@login_required
@require_POST
def change_request_reject(request: HttpRequest, pk: int) -> HttpResponse:
    cr = selectors.change_request_get(pk)
    form = RejectForm(request.POST)
    if not form.is_valid():
        form_errors(request, form)
        return _back(cr.pk, "#review")
    try:
        services.change_request_reject(user=request.user, change_request_id=cr.pk, comment=form.cleaned_data["comment"])
    except ApplicationError as error:
        service_error(request, error)
        return _back(cr.pk, "#review")
    messages.success(request, f"CR-{cr.pk} rejected.")
    return _back(cr.pk)


@refusals_audited
@login_required
@require_POST
def change_request_replan(request: HttpRequest, pk: int) -> HttpResponse:
    cr = selectors.change_request_get(pk)
    try:
        services.change_request_replan(user=request.user, change_request_id=cr.pk)
    except ApplicationError as error:
        service_error(request, error)
        return _back(cr.pk)
    messages.success(request, f"CR-{cr.pk} re-planned; earlier approvals no longer count. Review the new plan.")
    return _back(cr.pk)


@refusals_audited
@login_required
@require_POST
def change_request_promote(request: HttpRequest, pk: int) -> HttpResponse:
    cr = selectors.change_request_get(pk)
    target = request.POST.get("environment") or None
    if target is not None and target not in Environment.Name.values:
        messages.error(request, f"environment: {target!r} is not one of {', '.join(Environment.Name.values)}")
        return _back(cr.pk)
    try:
        result = services.change_request_promote(user=request.user, change_request_id=cr.pk, target_environment=target)
    except ApplicationError as error:
        service_error(request, error)
        return _back(cr.pk)
    if result.change_request is None:
        messages.info(request, "Nothing to promote: the next environment already matches these specs.")
        return _back(cr.pk)
    messages.success(request, f"CR-{cr.pk} promoted as CR-{result.change_request.pk}; it needs its own review.")
    return _back(result.change_request.pk)
