"""REST API v1. Views validate input and call catalog services (writes) or querysets (reads); no rules here."""

from typing import Any

from django.db.models import Count, Prefetch, Q, QuerySet
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from api import filters, parsers, serializers
from api.pagination import DeferredJoinPagination
from api.schema import COMPONENT_KEY_PATTERN, CONFLICT, ID_PATTERN, TEAM_SLUG_PATTERN
from catalog import plans, services
from catalog.models import Approval, AuditLogEntry, ChangeRequest, Component, Environment, Feature, FeatureVersion, Team
from provisioning.models import ProvisioningRun


class EnvironmentViewSet(viewsets.ReadOnlyModelViewSet[Environment]):
    queryset = Environment.objects.all()
    serializer_class = serializers.EnvironmentSerializer
    lookup_field = "name"
    filter_backends: list[Any] = []


class TeamViewSet(viewsets.ReadOnlyModelViewSet[Team]):
    queryset = Team.objects.prefetch_related("memberships__user", "components")
    serializer_class = serializers.TeamSerializer
    lookup_field = "slug"
    lookup_value_regex = TEAM_SLUG_PATTERN
    filter_backends: list[Any] = []


_COUNT_IN = OpenApiParameter("environment", str, description="Count active and online features in this environment.")


@extend_schema_view(list=extend_schema(parameters=[_COUNT_IN]), retrieve=extend_schema(parameters=[_COUNT_IN]))
class ComponentViewSet(viewsets.ReadOnlyModelViewSet[Component]):
    """Components; `?environment=` counts their active and online features there."""

    serializer_class = serializers.ComponentSerializer
    lookup_field = "key"
    lookup_value_regex = COMPONENT_KEY_PATTERN
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[Component]:
        # Ordered explicitly: Meta.ordering does not apply to the aggregating query below, and pages need an order.
        queryset = Component.objects.select_related("owner", "entity_type").order_by("key")
        env = self.request.query_params.get("environment")
        if env:
            active = Q(features__environment__name=env, features__status=Feature.Status.ACTIVE)
            queryset = queryset.annotate(
                active_features=Count("features", filter=active),
                online_features=Count("features", filter=active & Q(features__online=True)),
            )
        return queryset


class FeatureViewSet(viewsets.ReadOnlyModelViewSet[Feature]):
    lookup_value_regex = ID_PATTERN
    filterset_class = filters.FeatureFilter
    pagination_class = DeferredJoinPagination

    def get_queryset(self) -> QuerySet[Feature]:
        queryset = Feature.objects.select_related("environment", "component", "owner").order_by(
            "component_id", "name", "environment_id"
        )
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(
                Prefetch("versions", FeatureVersion.objects.select_related("created_by"))
            )
        return queryset

    def get_serializer_class(self) -> type[serializers.FeatureSerializer]:
        return serializers.FeatureDetailSerializer if self.action == "retrieve" else serializers.FeatureSerializer


def _approvals_prefetch() -> Prefetch[Any, Any, Any]:
    return Prefetch("approvals", Approval.objects.select_related("user", "change_request"))


class ChangeRequestViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[ChangeRequest]):
    lookup_value_regex = ID_PATTERN
    filterset_class = filters.ChangeRequestFilter
    parser_classes = [parsers.BoundedJSONParser, FormParser, MultiPartParser]

    def get_queryset(self) -> QuerySet[ChangeRequest]:
        queryset = ChangeRequest.objects.select_related("environment", "author")
        if self.action == "list":
            return queryset.defer("specs")
        return queryset.prefetch_related(_approvals_prefetch(), "provisioning_runs")

    def get_serializer_class(self) -> type[Any]:
        if self.action == "list":
            return serializers.ChangeRequestSerializer
        return serializers.ChangeRequestDetailSerializer

    def _detail(self, cr: ChangeRequest) -> dict[str, Any]:
        fresh = self.get_queryset().get(pk=cr.pk)
        return dict(serializers.ChangeRequestDetailSerializer(fresh, context=self.get_serializer_context()).data)

    @extend_schema(
        request=serializers.ChangeRequestCreateSerializer,
        responses={
            201: serializers.SubmitResponseSerializer,
            200: OpenApiResponse(serializers.SubmitResponseSerializer, description="No changes: nothing was created."),
            409: CONFLICT,
        },
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Submit specs; returns the change request and its plan (200 with no change request when empty)."""
        data = serializers.ChangeRequestCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.change_request_submit(
            user=request.user,
            environment_name=data.validated_data["environment"],
            title=data.validated_data["title"],
            description=data.validated_data["description"],
            payload={"specs": data.validated_data["specs"]},
            supersedes_id=data.validated_data["supersedes"],
        )
        body = {
            "change_request": self._detail(result.change_request) if result.change_request else None,
            "plan": result.plan,
            "text": plans.plan_text(result.plan),
        }
        return Response(body, status=status.HTTP_201_CREATED if result.change_request else status.HTTP_200_OK)

    @extend_schema(request=serializers.PlanRequestSerializer, responses={200: serializers.PlanResponseSerializer})
    @action(detail=False, methods=["post"])
    def plan(self, request: Request) -> Response:
        """Validate and plan specs without submitting anything (what `fcc plan` calls)."""
        data = serializers.PlanRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        environment = services.environment_get(data.validated_data["environment"])
        result = services.change_request_plan(environment=environment, payload={"specs": data.validated_data["specs"]})
        return Response({"plan": result.plan, "plan_hash": result.plan_hash, "text": plans.plan_text(result.plan)})

    @extend_schema(
        request=serializers.ApproveSerializer, responses={200: serializers.ApproveResponseSerializer, 409: CONFLICT}
    )
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        data = serializers.ApproveSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        cr, missing = services.change_request_approve(
            user=request.user,
            change_request_id=int(pk),
            comment=data.validated_data["comment"],
            plan_hash=data.validated_data["plan_hash"] or None,
        )
        return Response({"change_request": self._detail(cr), "missing": missing})

    @extend_schema(
        request=serializers.RejectSerializer, responses={200: serializers.ChangeRequestDetailSerializer, 409: CONFLICT}
    )
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str) -> Response:
        data = serializers.RejectSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        cr = services.change_request_reject(
            user=request.user, change_request_id=int(pk), comment=data.validated_data["comment"]
        )
        return Response(self._detail(cr))

    @extend_schema(request=None, responses={200: serializers.ChangeRequestDetailSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def replan(self, request: Request, pk: str) -> Response:
        cr = services.change_request_replan(user=request.user, change_request_id=int(pk))
        return Response(self._detail(cr))

    @extend_schema(
        request=serializers.PromoteSerializer,
        responses={
            201: serializers.SubmitResponseSerializer,
            200: OpenApiResponse(
                serializers.SubmitResponseSerializer,
                description="The next environment already matches: nothing created.",
            ),
            409: CONFLICT,
        },
    )
    @action(detail=True, methods=["post"])
    def promote(self, request: Request, pk: str) -> Response:
        data = serializers.PromoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = services.change_request_promote(
            user=request.user, change_request_id=int(pk), target_environment=data.validated_data.get("environment")
        )
        body = {
            "change_request": self._detail(result.change_request) if result.change_request else None,
            "plan": result.plan,
            "text": plans.plan_text(result.plan),
        }
        return Response(body, status=status.HTTP_201_CREATED if result.change_request else status.HTTP_200_OK)


class ProvisioningRunViewSet(viewsets.ReadOnlyModelViewSet[ProvisioningRun]):
    lookup_value_regex = ID_PATTERN
    filterset_class = filters.ProvisioningRunFilter

    def get_queryset(self) -> QuerySet[ProvisioningRun]:
        queryset = ProvisioningRun.objects.select_related("environment")
        return queryset.defer("plan") if self.action == "list" else queryset

    def get_serializer_class(self) -> type[Any]:
        if self.action == "list":
            return serializers.ProvisioningRunSerializer
        return serializers.ProvisioningRunDetailSerializer


class AuditLogViewSet(viewsets.ReadOnlyModelViewSet[AuditLogEntry]):
    """The append-only audit log. There is no endpoint that edits or deletes it."""

    queryset = AuditLogEntry.objects.all()
    lookup_value_regex = ID_PATTERN
    serializer_class = serializers.AuditLogEntrySerializer
    filterset_class = filters.AuditLogFilter
