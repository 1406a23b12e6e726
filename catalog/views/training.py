"""Training datasets: request one from an entity file, follow it while a worker builds it, download the Parquet.

As in the API (api/views_training.py), any signed-in user may list, view, request and download them. The request
form is multipart, so a refused request re-renders the page with its problems (a redirect would drop the file).
"""

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from catalog.errors import ApplicationError, PermissionDenied, Problem
from catalog.forms import TrainingDatasetForm
from catalog.selectors import training_dataset_get, training_datasets
from catalog.views.common import environments, paginate, refusals_audited
from catalog.views.provisioning import HTMX_STOP_POLLING, env_or_all
from provisioning import training as training_service
from provisioning.models import TrainingDataset

LIVE_TRAINING = (TrainingDataset.State.QUEUED, TrainingDataset.State.RUNNING)
PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"


def selection_summary(selection: dict[str, Any]) -> str:
    """What was asked for, in a table cell: `all`, `3 features`, `components c1, c8`, or both of the last two."""
    features = selection.get("features") or []
    components = selection.get("components") or []
    parts = []
    if features:
        parts.append(f"{len(features)} feature{'' if len(features) == 1 else 's'}")
    if components:
        parts.append("components " + ", ".join(components))
    return " + ".join(parts) or "all"


def training_rows(datasets: Any) -> list[tuple[TrainingDataset, str]]:
    return [(d, selection_summary(d.selection)) for d in datasets]


def _list_page(
    request: HttpRequest,
    form: TrainingDatasetForm,
    *,
    error: str = "",
    problems: list[Problem] | None = None,
    status: int = 200,
) -> HttpResponse:
    environment = env_or_all(request)
    state = request.GET.get("state", "")
    state = state if state in TrainingDataset.State.values else ""
    page = paginate(request, training_datasets(environment, state))
    context = {
        "environment": environment,
        "environments": environments(),
        "states": TrainingDataset.State.values,
        "state": state,
        "page": page,
        "rows": training_rows(page.object_list),
        "form": form,
        "error": error,
        "problems": problems or [],
    }
    return render(request, "console/training/list.html", context, status=status)


@login_required
@require_GET
def training_dataset_list(request: HttpRequest) -> HttpResponse:
    environment = env_or_all(request)
    form = TrainingDatasetForm(initial={"environment": environment.name if environment else "dev"})
    return _list_page(request, form)


def _form_problems(form: TrainingDatasetForm) -> list[Problem]:
    """The form's errors located as the service's problems are, so the page lists both the same way."""
    return [
        Problem(field, error.code or "invalid", " ".join(error.messages))
        for field, errors in form.errors.as_data().items()
        for error in errors
    ]


@refusals_audited
@login_required
@require_POST
def training_dataset_request(request: HttpRequest) -> HttpResponse:
    """The API's create, from the page's form: training_dataset_request checks everything and writes nothing
    when any problem is found."""
    form = TrainingDatasetForm(request.POST, request.FILES)
    if not form.is_valid():
        problems = _form_problems(form)
        return _list_page(request, form, error=f"{len(problems)} problem(s) in the form", problems=problems, status=400)
    data = form.cleaned_data
    try:
        dataset = training_service.training_dataset_request(
            user=request.user,
            environment_name=data["environment"],
            upload=data["entities"],
            features=data["features"],
            components=data["components"],
        )
    except PermissionDenied:
        raise  # answered 403 and audited by refusals_audited, as the other actions' refusals are
    except ApplicationError as failure:
        return _list_page(request, form, error=failure.message, problems=failure.problems, status=400)
    messages.success(
        request,
        f"Training dataset {dataset.pk} queued: {dataset.entity_rows} entity rows, "
        f"{selection_summary(dataset.selection)}.",
    )
    return redirect("console:training-dataset-detail", pk=dataset.pk)


def _progress_context(dataset: TrainingDataset) -> dict[str, Any]:
    return {"dataset": dataset, "live": dataset.state in LIVE_TRAINING}


@login_required
@require_GET
def training_dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = training_dataset_get(pk)
    context = {
        **_progress_context(dataset),
        "environment": dataset.environment,
        "selection": selection_summary(dataset.selection),
    }
    return render(request, "console/training/detail.html", context)


@login_required
@require_GET
def training_dataset_progress(request: HttpRequest, pk: int) -> HttpResponse:
    context = _progress_context(training_dataset_get(pk))
    response = render(request, "console/partials/training_progress.html", context)
    if not context["live"]:
        response.status_code = HTMX_STOP_POLLING
    return response


@login_required
@require_GET
def training_dataset_result(request: HttpRequest, pk: int) -> HttpResponseBase:
    """The Parquet file, as the API's `result` sends it; 409 until the dataset has succeeded."""
    dataset = training_dataset_get(pk)
    if dataset.state != TrainingDataset.State.SUCCEEDED:
        reason = f"Training dataset {dataset.pk} is {dataset.state}; its result is not ready."
        return render(request, "console/training/not_ready.html", {"dataset": dataset, "reason": reason}, status=409)
    try:
        handle = open(dataset.result_path, "rb")  # noqa: SIM115 - FileResponse closes it once sent
    except FileNotFoundError as missing:
        raise Http404(f"the result file of training dataset {dataset.pk} is gone") from missing
    return FileResponse(
        handle,
        as_attachment=True,
        filename=f"training-dataset-{dataset.pk}.parquet",
        content_type=PARQUET_CONTENT_TYPE,
    )
