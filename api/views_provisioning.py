"""Drift, costs and run retries: the provisioning side of the API."""

from typing import Any

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog import roles
from catalog.audit import audit_log_write, audit_refusal
from catalog.errors import Conflict, NotFound, PermissionDenied
from catalog.services import environment_get
from provisioning.costs import environment_costs
from provisioning.drift import drift_detect
from provisioning.models import DriftReport, ProvisioningRun


class DriftReportSerializer(serializers.ModelSerializer[DriftReport]):
    environment = serializers.CharField(source="environment.name")

    class Meta:
        model = DriftReport
        fields = ["id", "environment", "revision", "consistent", "findings", "error", "trigger", "created_at"]


class DriftView(APIView):
    @extend_schema(responses={200: DriftReportSerializer})
    def get(self, request: Request, name: str) -> Response:
        """The latest drift report of the environment."""
        environment = environment_get(name)
        report = DriftReport.objects.filter(environment=environment).select_related("environment").first()
        if report is None:
            raise NotFound(f"no drift report for {name} yet; POST to this URL to run one")
        return Response(DriftReportSerializer(report).data)

    @extend_schema(request=None, responses={201: DriftReportSerializer})
    def post(self, request: Request, name: str) -> Response:
        """Compares the live stores with the catalog now and records the report."""
        report = drift_detect(environment=environment_get(name), trigger="on_demand")
        return Response(DriftReportSerializer(report).data, status=status.HTTP_201_CREATED)


class CostsView(APIView):
    @extend_schema(responses={200: serializers.JSONField()})
    def get(self, request: Request, name: str) -> Response:
        return Response(environment_costs(environment_get(name)))


class RunRetryView(APIView):
    @extend_schema(request=None, responses={202: serializers.JSONField()})
    def post(self, request: Request, pk: int) -> Response:
        """Puts a failed run back in the queue; it resumes at its first unfinished step."""
        user: Any = request.user
        if not (roles.is_admin(user) or roles.is_reviewer(user)):
            reason = "only admins and reviewers may retry provisioning runs"
            audit_refusal(
                actor=user, action="provisioning_run.retry", object_type="provisioning_run", object_id=pk, reason=reason
            )
            raise PermissionDenied(reason)
        with transaction.atomic():
            run = ProvisioningRun.objects.select_for_update().select_related("environment").filter(pk=pk).first()
            if run is None:
                raise NotFound(f"provisioning run {pk} does not exist")
            if run.state != ProvisioningRun.State.FAILED:
                raise Conflict(f"provisioning run {pk} is {run.state}; only failed runs can be retried")
            run.state = ProvisioningRun.State.QUEUED
            run.error = ""
            run.save(update_fields=["state", "error"])
            audit_log_write(
                actor=user,
                action="provisioning_run.retry",
                object_type="provisioning_run",
                object_id=run.pk,
                environment=run.environment.name,
                before={"state": "failed"},
                after={"state": "queued"},
            )

            def enqueue() -> None:
                from workers.tasks import provisioning_run_execute

                provisioning_run_execute.delay(run.pk)

            transaction.on_commit(enqueue)
        return Response({"id": run.pk, "state": run.state}, status=status.HTTP_202_ACCEPTED)
