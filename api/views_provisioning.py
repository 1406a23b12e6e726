"""Drift, costs and run retries: the provisioning side of the API."""

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.schema import CONFLICT, ID_PATTERN
from catalog.errors import NotFound
from catalog.models import Environment
from catalog.services import environment_get
from provisioning.backfill import backfill_cancel, backfill_progress, backfill_request
from provisioning.costs import environment_costs
from provisioning.drift import drift_detect
from provisioning.models import Backfill, BackfillPartition, DriftReport
from provisioning.services import provisioning_run_retry

ENVIRONMENT_NAME = OpenApiParameter(
    "name", str, OpenApiParameter.PATH, enum=Environment.Name.values, description="The environment."
)


class DriftReportSerializer(serializers.ModelSerializer[DriftReport]):
    environment = serializers.CharField(source="environment.name")

    class Meta:
        model = DriftReport
        fields = ["id", "environment", "revision", "consistent", "findings", "error", "trigger", "created_at"]


class DriftView(APIView):
    @extend_schema(parameters=[ENVIRONMENT_NAME], responses={200: DriftReportSerializer})
    def get(self, request: Request, name: str) -> Response:
        """The latest drift report of the environment."""
        environment = environment_get(name)
        report = DriftReport.objects.filter(environment=environment).select_related("environment").first()
        if report is None:
            raise NotFound(f"no drift report for {name} yet; POST to this URL to run one")
        return Response(DriftReportSerializer(report).data)

    @extend_schema(parameters=[ENVIRONMENT_NAME], request=None, responses={201: DriftReportSerializer})
    def post(self, request: Request, name: str) -> Response:
        """Compares the live stores with the catalog now and records the report."""
        report = drift_detect(environment=environment_get(name), trigger="on_demand")
        return Response(DriftReportSerializer(report).data, status=status.HTTP_201_CREATED)


class CostsView(APIView):
    @extend_schema(parameters=[ENVIRONMENT_NAME], responses={200: OpenApiTypes.OBJECT})
    def get(self, request: Request, name: str) -> Response:
        return Response(environment_costs(environment_get(name)))


class RunRetryView(APIView):
    @extend_schema(request=None, responses={202: OpenApiTypes.OBJECT, 409: CONFLICT})
    def post(self, request: Request, pk: int) -> Response:
        """Puts a failed run back in the queue; it resumes at its first unfinished step."""
        run = provisioning_run_retry(user=request.user, run_id=pk)
        return Response({"id": run.pk, "state": run.state}, status=status.HTTP_202_ACCEPTED)


class BackfillSerializer(serializers.ModelSerializer[Backfill]):
    environment = serializers.CharField(source="environment.name")
    requested_by = serializers.CharField(source="requested_by.username", default=None, allow_null=True)
    progress = serializers.SerializerMethodField()

    class Meta:
        model = Backfill
        fields = [
            "id", "environment", "components", "source", "start_date", "end_date", "reason", "requested_by",
            "provisioning_run", "state", "cancel_requested", "progress", "error", "created_at", "started_at",
            "finished_at",
        ]  # fmt: skip

    def get_progress(self, obj: Backfill) -> dict[str, Any]:
        return backfill_progress(obj)


class BackfillPartitionSerializer(serializers.ModelSerializer[BackfillPartition]):
    class Meta:
        model = BackfillPartition
        fields = ["component", "partition_date", "status", "source_rows", "target_rows", "source_bytes", "finished_at"]


class BackfillDetailSerializer(BackfillSerializer):
    partitions = BackfillPartitionSerializer(many=True, read_only=True)

    class Meta(BackfillSerializer.Meta):
        fields = [*BackfillSerializer.Meta.fields, "partitions"]


class BackfillRequestSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices)
    source = serializers.CharField(  # type: ignore[assignment]  # a field named like Field.source
        max_length=1024, help_text="A local directory or a gs:// URI in the story's layout."
    )
    start_date = serializers.DateField(required=False, allow_null=True, default=None)
    end_date = serializers.DateField(required=False, allow_null=True, default=None)
    components = serializers.ListField(
        child=serializers.CharField(max_length=16), required=False, default=list, max_length=64
    )


class BackfillViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Backfill]):
    lookup_value_regex = ID_PATTERN
    filterset_fields = ["state"]

    def get_queryset(self) -> QuerySet[Backfill]:
        queryset = Backfill.objects.select_related("environment", "requested_by")
        environment = self.request.query_params.get("environment")
        return queryset.filter(environment__name=environment) if environment else queryset

    def get_serializer_class(self) -> type[Any]:
        return BackfillDetailSerializer if self.action == "retrieve" else BackfillSerializer

    @extend_schema(request=BackfillRequestSerializer, responses={201: BackfillSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Checks the files against the catalog (nothing is written when any problem is found), then queues."""
        data = BackfillRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        backfill = backfill_request(
            user=request.user,
            environment_name=data.validated_data["environment"],
            source=data.validated_data["source"],
            start_date=data.validated_data["start_date"],
            end_date=data.validated_data["end_date"],
            components=data.validated_data["components"] or None,
        )
        return Response(BackfillSerializer(backfill).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: BackfillSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        """Stops after the partition job in progress; no partition is left half written."""
        return Response(BackfillSerializer(backfill_cancel(user=request.user, backfill_id=int(pk))).data)
