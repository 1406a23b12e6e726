"""What every console view shares: environment choice, pagination, service errors as messages, refusals as 403."""

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from catalog.audit import audit_access_denied
from catalog.errors import ApplicationError, PermissionDenied
from catalog.models import Environment

PAGE_SIZE = 50
MAX_PROBLEMS_SHOWN = 10


def environments() -> list[Environment]:
    return list(Environment.objects.order_by("id"))


def paginate(request: HttpRequest, queryset: QuerySet[Any], per_page: int = PAGE_SIZE) -> Page[Any]:
    """One page, counted and sliced in the database (LIMIT/OFFSET); out-of-range pages give the last."""
    paginator = Paginator(queryset, per_page)
    return paginator.get_page(request.GET.get("page"))


def service_error(request: HttpRequest, error: ApplicationError) -> None:
    """A service's error, as the person reads it: the message and the located problems. A refusal of permission
    is not a message: it propagates to `refusals_audited`, which answers 403."""
    if isinstance(error, PermissionDenied):
        raise error
    problems = [f"{p.path}: {p.detail}" if p.path else p.detail for p in error.problems[:MAX_PROBLEMS_SHOWN]]
    more = len(error.problems) - MAX_PROBLEMS_SHOWN
    if more > 0:
        problems.append(f"and {more} more")
    text = error.message + (" — " + "; ".join(problems) if problems else "")
    messages.error(request, text)


def form_errors(request: HttpRequest, form: Any) -> None:
    for field, errors in form.errors.items():
        label = form.fields[field].label or field.replace("_", " ") if field in form.fields else ""
        for error in errors:
            messages.error(request, f"{label}: {error}" if label else str(error))


def refusals_audited(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Outermost decorator of the console's actions (POST views): a refused action answers 403 with the reason,
    and is audited once (services audit their own refusals; others become `access.denied`). An anonymous POST
    is logged and sent to the sign-in page by login_required underneath."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated and request.method == "POST":
            audit_access_denied(
                actor=request.user, method="POST", path=request.path, status=302, reason="not signed in"
            )
        try:
            return view(request, *args, **kwargs)
        except (PermissionDenied, DjangoPermissionDenied) as error:
            reason = error.message if isinstance(error, PermissionDenied) else str(error) or "permission denied"
            audit_access_denied(
                actor=request.user, method=request.method or "", path=request.path, status=403, reason=reason
            )
            return render(request, "403.html", {"exception": reason}, status=403)

    return wrapper
