"""One error body everywhere: {"code", "message", "errors": [{"path", "rule", "detail"}]}."""

import logging
import sys
from collections.abc import Callable
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import SuspiciousOperation
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from catalog.audit import audit_access_denied
from catalog.errors import ApplicationError

logger = logging.getLogger(__name__)


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
    if database_unavailable(exc):
        return Response(
            _database_unavailable_body(exc, context.get("request")),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, ApplicationError):
        body = error_body(exc.code, exc.message, [p.as_dict() for p in exc.problems], **exc.extra)
        _refusal_record(context, exc.status, exc.message)
        return Response(body, status=exc.status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, SuspiciousOperation):
        # Too many form fields, a body over FCC_MAX_REQUEST_BYTES, a malformed multipart body: the client's error.
        exc = exceptions.ParseError(f"the request body was refused: {exc}")
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
    _refusal_record(context, response.status_code, str((response.data or {}).get("message", "")))
    return response


def _refusal_record(context: dict[str, Any], status_code: int, reason: str) -> None:
    """Every 401 and 403 is recorded once: services audit their own refusals; anything else (a permission class,
    a view's check) is audited here as `access.denied` (anonymous requests are logged, see audit_access_denied)."""
    if status_code not in (status.HTTP_401_UNAUTHORIZED, status.HTTP_403_FORBIDDEN):
        return
    request = context.get("request")
    if request is None:
        return
    audit_access_denied(
        actor=getattr(request, "user", None),
        method=request.method or "",
        path=request.path,
        status=status_code,
        reason=reason or "refused",
    )


# Requests that never reach a DRF view (no route matches, or Django refuses them first) still answer with the
# API's error body under /api/; the console's pages keep Django's HTML ones.


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(error_body("bad_request", "the request is malformed"), status=status.HTTP_400_BAD_REQUEST)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if _is_api(request):
        return JsonResponse(
            error_body("not_found", "no API endpoint or object at this URL"), status=status.HTTP_404_NOT_FOUND
        )
    return defaults.page_not_found(request, exception)


def handler500(request: HttpRequest) -> HttpResponse:
    if database_unavailable(sys.exc_info()[1]):  # raised by a middleware, outside any view
        return database_unavailable_response(request, sys.exc_info()[1])
    if _is_api(request):
        return JsonResponse(
            error_body("server_error", "internal error; X-Request-ID identifies it in the logs"),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    return defaults.server_error(request)


# The database down (restarting, failing over, refusing connections) or too busy to answer: 503 with Retry-After
# and the error body, not a 500 with a traceback. Nothing needs restarting once it is back: a broken connection
# is closed at the end of the request and the next request opens a new one (CONN_HEALTH_CHECKS, settings).
RETRY_AFTER_SECONDS = 5


def database_unavailable(exc: BaseException | None) -> bool:
    return isinstance(exc, OperationalError | InterfaceError)


def _database_unavailable_body(exc: BaseException, request: Any) -> dict[str, Any]:
    logger.warning(
        "database unavailable", extra={"path": getattr(request, "path", ""), "error": str(exc).strip()[:300]}
    )
    return error_body("database_unavailable", f"the database is unavailable; retry in {RETRY_AFTER_SECONDS} s")


def database_unavailable_response(request: HttpRequest, exc: BaseException | None) -> HttpResponse:
    body = _database_unavailable_body(exc or OperationalError(), request)
    response = JsonResponse(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseUnavailableMiddleware:
    """Answers 503 for views outside the API (console pages, healthz) when the database is unavailable."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return database_unavailable_response(request, exception) if database_unavailable(exception) else None
