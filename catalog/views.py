"""The console's server-rendered pages (the full console is built on these in templates/)."""

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from catalog.models import ChangeRequest, Environment, Feature
from provisioning.models import ProvisioningRun


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    environments = []
    for env in Environment.objects.all():
        features = Feature.objects.filter(environment=env, status=Feature.Status.ACTIVE)
        environments.append(
            {
                "env": env,
                "features": features.count(),
                "online": features.filter(online=True).count(),
                "pending": ChangeRequest.objects.filter(environment=env, state=ChangeRequest.State.PROPOSED).count(),
            }
        )
    context = {
        "environments": environments,
        "change_requests": ChangeRequest.objects.select_related("environment", "author").defer("specs", "plan")[:20],
        "runs": ProvisioningRun.objects.select_related("environment").defer("plan")[:20],
    }
    return render(request, "home.html", context)
