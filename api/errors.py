"""One error body everywhere: {"code", "message", "errors": [{"path", "rule", "detail"}]}."""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.errors import ApplicationError


def _flatten(detail: Any, path: str = "") -> list[dict[str, str]]:
    if isinstance(detail, dict):
        items: list[dict[str, str]] = []
        for key, value in detail.items():
            sub = (
                f"{path}.{key}"
                if path and key != "non_field_errors"
                else (path if key == "non_field_errors" else str(key))
            )
            items.extend(_flatten(value, sub))
        return items
    if isinstance(detail, list):
        if all(isinstance(d, exceptions.ErrorDetail | str) for d in detail):
            return [
                {
                    "path": path or "request",
                    "rule": getattr(d, "code", "invalid"),
                    "detail": f"{path or 'request'}: {d}",
                }
                for d in detail
            ]
        items = []
        for i, value in enumerate(detail):
            items.extend(_flatten(value, f"{path}[{i}]"))
        return items
    return [{"path": path or "request", "rule": getattr(detail, "code", "invalid"), "detail": str(detail)}]


def _encodable(value: Any) -> Any:
    """Error details may echo the input; an unpaired surrogate in it would make rendering the response fail."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {k: _encodable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encodable(v) for v in value]
    return value


def error_body(code: str, message: str, errors: list[dict[str, str]] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = _encodable({"code": code, "message": message, "errors": errors or [], **extra})
    return body


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        body = error_body(exc.code, exc.message, [p.as_dict() for p in exc.problems], **exc.extra)
        return Response(body, status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        response.data = error_body("invalid", f"{len(errors)} problem(s) in the request", errors)
    elif isinstance(exc, exceptions.APIException):
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        response.data = error_body(str(exc.get_codes()) if isinstance(exc.get_codes(), str) else "error", detail)
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = "Token"
    return response
