from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.models import ApiToken
from api.row_cache import RowCache

# Tokens with their users by digest. Each request still reads the token's row joined with its user's (one plain
# SELECT, without the ORM's query compilation), so a revoked or expired token or a deactivated user is refused
# on the very next request, in every process.
tokens: RowCache[ApiToken] = RowCache(
    ApiToken, "digest", lambda digest: ApiToken.objects.select_related("user").filter(digest=digest).first(), ["user"]
)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Token <secret>`. Revoked or expired tokens stop working at once (checked every request)."""

    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Token <secret>'")
        try:
            secret = header[1].decode()
        except UnicodeError:
            raise exceptions.AuthenticationFailed("the token contains invalid characters") from None
        token = tokens.get(ApiToken.hash(secret))
        if token is None or not token.is_active or not token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token")
        now = timezone.now()
        if token.last_used_at is None or now - token.last_used_at > timedelta(minutes=1):
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


class ApiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Describes the token scheme in the OpenAPI document (`Authorization: Token <secret>`)."""

    target_class = "api.authentication.ApiTokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "apiKey",
            "in": "header",
            "name": "Authorization",
            "description": "`Token <secret>`; `python manage.py create_api_token USERNAME` prints one.",
        }
