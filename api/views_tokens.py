"""API tokens: list yours (admins: everyone's), issue one (its secret is shown once), revoke, with expiry."""

from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from api.models import ApiToken
from api.schema import CONFLICT, ID_PATTERN
from catalog import roles
from catalog.audit import audit_log_write
from catalog.errors import Conflict


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    user = serializers.CharField(source="user.username", read_only=True)
    active = serializers.BooleanField(source="is_active", read_only=True)

    class Meta:
        model = ApiToken
        fields = ["id", "user", "name", "prefix", "created_at", "expires_at", "revoked_at", "last_used_at", "active"]


class ApiTokenIssueSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=100)
    expires_in_days = serializers.IntegerField(
        min_value=1, max_value=3650, required=False, allow_null=True, default=None
    )


class ApiTokenIssuedSerializer(ApiTokenSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once; only its hash is stored.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "secret"]


class ApiTokenViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[ApiToken]):
    lookup_value_regex = ID_PATTERN
    serializer_class = ApiTokenSerializer
    filter_backends: list[Any] = []

    def get_queryset(self) -> QuerySet[ApiToken]:
        queryset = ApiToken.objects.select_related("user")
        if getattr(self, "swagger_fake_view", False):  # the schema generator has no user
            return queryset.none()
        user: Any = self.request.user
        return queryset if roles.is_admin(user) else queryset.filter(user=user)

    @extend_schema(request=ApiTokenIssueSerializer, responses={201: ApiTokenIssuedSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = ApiTokenIssueSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        days = data.validated_data["expires_in_days"]
        with transaction.atomic():
            token, secret = ApiToken.issue(
                user=request.user,
                name=data.validated_data["name"],
                expires_at=timezone.now() + timedelta(days=days) if days else None,
            )
            audit_log_write(
                actor=request.user,
                action="api_token.issue",
                object_type="api_token",
                object_id=token.pk,
                after={"name": token.name, "prefix": token.prefix, "expires_at": str(token.expires_at)},
            )
        body = dict(ApiTokenSerializer(token).data)
        body["secret"] = secret
        return Response(body, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: ApiTokenSerializer, 409: CONFLICT})
    @action(detail=True, methods=["post"])
    def revoke(self, request: Request, pk: str) -> Response:
        """Revoked at once: the next request with it is refused."""
        with transaction.atomic():
            token = get_object_or_404(self.get_queryset().select_for_update(), pk=int(pk))
            if token.revoked_at is not None:
                raise Conflict(f"token {token.pk} is already revoked")
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_log_write(
                actor=request.user,
                action="api_token.revoke",
                object_type="api_token",
                object_id=token.pk,
                after={"user": token.user.get_username(), "prefix": token.prefix},
            )
        return Response(ApiTokenSerializer(token).data)
