"""`POST /api/v1/online-features/` answered in front of Django, as a feature store's server answers reads.

Django's middleware and DRF's dispatch cost four times the read itself (issue 4: 1,000 reads a second with p99
under 10 ms). `OnlineReadFastPath` answers the common request alone: a valid `Authorization: Token ...`, a JSON
body in the shape `plain_read` takes, an existing environment, every feature online. Anything else, and any
error on the way, goes to the unchanged Django application with the body it sent (so errors, the `entities` form,
bad tokens and session calls keep their responses, audit and logs) — except a database outage, whose 503 it
answers itself, as Django would, rather than make Django wait for the database a second time. What it answers is what
Django answers: the same checks (ApiTokenAuthentication itself, the row caches), DRF's parser, the same body
byte for byte and the headers Django's middleware and DRF add, taken from them once. tests/test_online_fast_path.py
compares both paths.
"""

import io
import json
import logging
import sys
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import orjson
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest
from django.core.signals import request_finished, request_started, setting_changed
from django.db import DatabaseError
from django.http import HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import resolve
from django.utils.log import log_response
from rest_framework.exceptions import APIException
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from api.authentication import ApiTokenAuthentication
from api.errors import RETRY_AFTER_SECONDS, database_unavailable, database_unavailable_response
from api.views_online import OnlineFeaturesView, environments, plain_read
from config.logging import request_id_var
from provisioning.online_read import OnlineReadError, OnlineRow, online_features_read, online_rows_as_dicts

logger = logging.getLogger(__name__)
ONLINE_PATH = "/api/v1/online-features/"
# The middleware the fast path stands in for: in front of it, on this route, each does nothing but what the
# fast path does too (a request id, the host check, the SSL redirect, the response headers). Another list turns
# the fast path off until it is taught what the new one does.
MIDDLEWARE = [
    "config.logging.RequestIdMiddleware",
    "api.errors.DatabaseUnavailableMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# The requests DRF would answer with its JSON renderer and parse with its JSON parser (a charset other than
# UTF-8, `indent`, the browsable API are Django's).
ACCEPTS = frozenset({None, "*/*", "application/json"})
CONTENT_TYPES = frozenset({"application/json", "application/json; charset=utf-8", "application/json;charset=utf-8"})
_PLAIN_VALUES = frozenset({str, int, bool, type(None)})
_LARGEST_FLOAT = sys.float_info.max


def _standing_in() -> bool:
    """Whether Django would answer the route as the fast path does: the middleware and the view's policies it
    stands in for are the ones in force."""
    if list(settings.MIDDLEWARE) != MIDDLEWARE or settings.PREPEND_WWW or settings.DISALLOWED_USER_AGENTS:
        return False
    view = OnlineFeaturesView()
    return (
        getattr(resolve(ONLINE_PATH).func, "view_class", None) is OnlineFeaturesView
        and view.authentication_classes[0] is ApiTokenAuthentication
        and list(view.permission_classes) == [IsAuthenticated]
        and not view.throttle_classes
        and view.versioning_class is None
        and view.renderer_classes[0] is JSONRenderer
        and JSONParser in view.parser_classes
    )


def render(data: dict[str, Any], rows: Sequence[OnlineRow]) -> bytes:
    """The body DRF's JSONRenderer writes, byte for byte. orjson where it writes the same (ten times faster, a
    tenth of the request): not for floats below 1e-4 (`1e-05` is `1e-5` to it), NaN and infinities (null to it,
    an error to DRF), U+2028 and U+2029 (DRF escapes them) and types other than JSON's own."""
    for row in rows:
        for value, _, _ in row.values.values():
            kind = type(value)
            if kind is float:
                if not (1e-4 <= abs(value) <= _LARGEST_FLOAT or value == 0.0):
                    return JSONRenderer().render(data)
            elif kind not in _PLAIN_VALUES:
                return JSONRenderer().render(data)
    try:
        body = orjson.dumps(data)
    except orjson.JSONEncodeError:  # an integer past 64 bits, a lone surrogate
        return JSONRenderer().render(data)
    if b"\xe2\x80\xa8" in body or b"\xe2\x80\xa9" in body:
        return JSONRenderer().render(data)
    return body


class OnlineReadFastPath:
    """A WSGI application for `POST /api/v1/online-features/` in front of `django` (config/wsgi.py)."""

    def __init__(self, django: WSGIApplication) -> None:
        self.django = django
        self.authentication = ApiTokenAuthentication()
        self.security = SecurityMiddleware(lambda request: HttpResponse())
        self._standing_in: bool | None = None
        self._headers: dict[bool, list[tuple[str, str]]] = {}
        setting_changed.connect(self._settings_changed)

    def _settings_changed(self, **kwargs: Any) -> None:
        # Tests override settings: what was derived from them is derived again.
        self._standing_in = None
        self._headers.clear()
        self.security = SecurityMiddleware(lambda request: HttpResponse())

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        answer = self.answer(environ)
        if answer is None:
            return self.django(environ, start_response)
        status, headers, body = answer
        start_response(status, headers)
        return [body]

    def answer(self, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes] | None:
        """The response to the request, or None for Django to answer it (with the body, when it was read, in a
        new wsgi.input)."""
        if self._standing_in is None:
            self._standing_in = _standing_in()
        if not self._standing_in or environ.get("QUERY_STRING") or "HTTP_AUTHORIZATION" not in environ:
            return None
        if environ.get("HTTP_ACCEPT") not in ACCEPTS or environ.get("CONTENT_TYPE", "").lower() not in CONTENT_TYPES:
            return None
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return None
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if length <= 0 or (limit is not None and length > limit):
            return None
        request = WSGIRequest(environ)
        try:
            request.get_host()  # ALLOWED_HOSTS, as CommonMiddleware checks it
        except DisallowedHost:
            return None
        if self.security.process_request(request) is not None:  # SECURE_SSL_REDIRECT
            return None

        body = environ["wsgi.input"].read(length)
        environ["wsgi.input"] = io.BytesIO(body)
        incoming = environ.get("HTTP_X_REQUEST_ID", "")
        # As RequestIdMiddleware: the caller's id when it is sane, else a new one.
        request_id = incoming if 0 < len(incoming) <= 64 and incoming.replace("-", "").isalnum() else uuid.uuid4().hex
        context = request_id_var.set(request_id)
        # As Django's handler: the database connections are checked (and an outage's broken one closed) around
        # each request.
        request_started.send(sender=WSGIHandler, environ=environ)
        status = "200 OK"
        extra: list[tuple[str, str]] = []
        try:
            answer = self._read(request, body)
        except DatabaseError as error:
            if not database_unavailable(error):
                answer = None  # not an outage: Django's path answers it as it always has
            else:
                # An outage answered here, as Django's path answers it: asking Django would first wait for the
                # database a second time (a host that does not answer costs a whole connect timeout again).
                status, extra = "503 Service Unavailable", [("Retry-After", str(RETRY_AFTER_SECONDS))]
                answer = self._unavailable(request, error)
        except Exception:  # whatever else failed, Django's path answers it as it always has; logged, a bug here
            logger.exception("online read fast path failed; Django answers the request")
            answer = None
        finally:
            request_finished.send(sender=WSGIHandler)
            request_id_var.reset(context)
        if answer is None:
            # One id for the request, whichever path answers it.
            environ["HTTP_X_REQUEST_ID"] = request_id
            return None
        headers = [
            *self._fixed_headers(request),
            *extra,
            ("Content-Length", str(len(answer))),
            ("X-Request-ID", request_id),
        ]
        return status, headers, answer

    def _unavailable(self, request: WSGIRequest, error: DatabaseError) -> bytes:
        """The 503's body, logged as Django's path logs it (the outage, then the 5xx response)."""
        response = database_unavailable_response(request, error)
        log_response("%s: %s", response.reason_phrase, request.path, response=response, request=request)
        return bytes(JSONRenderer().render(json.loads(response.content)))

    def _read(self, request: WSGIRequest, body: bytes) -> bytes | None:
        try:
            # DRF's header reading takes a Django request as it takes its own.
            if self.authentication.authenticate(cast(Request, request)) is None:
                return None
            data = JSONParser().parse(io.BytesIO(body))
        except APIException:
            return None
        plain = plain_read(data)
        if plain is None:
            return None
        name, ids, features = plain
        environment = environments.get(name)
        if environment is None:
            return None
        try:
            rows = online_features_read(environment=environment, entity_ids=ids, features=features)
        except OnlineReadError:
            return None
        return render({"results": online_rows_as_dicts(rows)}, rows)

    def _fixed_headers(self, request: WSGIRequest) -> list[tuple[str, str]]:
        """The headers of a 200 other than its length and request id, as DRF's view and Django's middleware set
        them; they depend on the request only by whether it came over HTTPS (HSTS)."""
        secure = request.is_secure()
        headers = self._headers.get(secure)
        if headers is None:
            response = HttpResponse(content_type=JSONRenderer.media_type)
            for key, value in OnlineFeaturesView().default_response_headers.items():
                response[key] = value
            XFrameOptionsMiddleware(lambda r: response).process_response(request, response)
            self.security.process_response(request, response)
            headers = self._headers[secure] = list(response.items())
        return headers
