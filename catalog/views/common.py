"""What every console view shares: environment choice, pagination, service errors as messages."""

from typing import Any

from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import HttpRequest

from catalog.errors import ApplicationError
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
    """A refusal from a service, as the person reads it: the message and the located problems."""
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
