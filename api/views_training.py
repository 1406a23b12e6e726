from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import mixins, parsers, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.schema import CONFLICT, ID_PATTERN
from catalog.errors import Conflict, NotFound
from catalog.models import Environment
from provisioning.models import TrainingDataset
from provisioning.training import training_dataset_request


class TrainingDatasetSerializer(serializers.ModelSerializer[TrainingDataset]):
    environment = serializers.CharField(source="environment.name")
    requested_by = serializers.CharField(source="requested_by.username", default=None, allow_null=True)

    class Meta:
        model = TrainingDataset
        fields = [
            "id", "environment", "requested_by", "entity_rows", "selection", "features", "state", "result_rows",
            "result_bytes", "error", "created_at", "started_at", "finished_at",
        ]  # fmt: skip


class TrainingDatasetRequestSerializer(serializers.Serializer[Any]):
    environment = serializers.ChoiceField(choices=Environment.Name.choices)
    entities = serializers.FileField(help_text="Parquet or CSV: symbol, dte, event_timestamp, optional labels.")
    features = serializers.ListField(child=serializers.CharField(max_length=128), required=False, default=list)
    components = serializers.ListField(child=serializers.CharField(max_length=16), required=False, default=list)


class TrainingDatasetViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[TrainingDataset]):
    lookup_value_regex = ID_PATTERN
    serializer_class = TrainingDatasetSerializer
    parser_classes = [parsers.MultiPartParser, parsers.FormParser]
    filterset_fields = ["state"]

    def get_queryset(self) -> QuerySet[TrainingDataset]:
        return TrainingDataset.objects.select_related("environment", "requested_by")

    @extend_schema(request=TrainingDatasetRequestSerializer, responses={201: TrainingDatasetSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Queues a point-in-time join of the entity rows with the selected features (all when none named)."""
        data = TrainingDatasetRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        dataset = training_dataset_request(
            user=request.user,
            environment_name=data.validated_data["environment"],
            upload=data.validated_data["entities"],
            features=data.validated_data["features"],
            components=data.validated_data["components"],
        )
        return Response(TrainingDatasetSerializer(dataset).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses={
            (200, "application/vnd.apache.parquet"): OpenApiResponse(OpenApiTypes.BINARY, description="The result."),
            409: CONFLICT,
        }
    )
    @action(detail=True, methods=["get"])
    def result(self, request: Request, pk: str) -> FileResponse:
        dataset = self.get_object()
        if dataset.state != TrainingDataset.State.SUCCEEDED:
            raise Conflict(f"training dataset {dataset.pk} is {dataset.state}; its result is not ready")
        try:
            result = open(dataset.result_path, "rb")  # noqa: SIM115 - FileResponse closes it
        except FileNotFoundError:
            raise NotFound(
                f"training dataset {dataset.pk}'s result file is missing on the server; request the dataset again"
            ) from None
        return FileResponse(
            result,
            as_attachment=True,
            filename=f"training-dataset-{dataset.pk}.parquet",
            content_type="application/vnd.apache.parquet",
        )
