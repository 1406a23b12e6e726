"""The online read's fast path (api/online_fast_path.py) answers as Django and DRF do: the same status, body and
headers for the requests it answers, and everything else handed to Django with its body, answered as before."""

import datetime as dt
import io
import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import OperationalError, close_old_connections, connections
from django.utils import timezone
from django.utils.crypto import get_random_string
from rest_framework.renderers import JSONRenderer

import config.wsgi
from api.models import ApiToken
from api.online_fast_path import ONLINE_PATH, OnlineReadFastPath, render
from catalog.entity_ids import entity_id
from catalog.models import Environment, Feature
from config.logging import request_id_var
from provisioning import runner
from provisioning.backends import online_store_for
from provisioning.models import ProvisioningRun
from provisioning.online.base import OnlineValue
from provisioning.online_read import OnlineRow, online_features_read

pytestmark = pytest.mark.django_db
NOW = timezone.now().replace(second=0, microsecond=0)
ENTITY = entity_id("NIFTY", NOW, 3)
UNWRITTEN = entity_id("BANKNIFTY", NOW, 1)


class Answer:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.body = status, body
        self.headers = {k.lower(): v for k, v in headers}
        self.names = [k.lower() for k, _ in headers]

    def json(self) -> Any:
        return json.loads(self.body)


@contextmanager
def _connection_kept() -> Iterator[None]:
    """As with Django's test client: a request must not close the connection that holds the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


def environ_for(body: bytes, *, token: str | None = None, **extra: str) -> dict[str, Any]:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": ONLINE_PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "testserver",
        "REMOTE_ADDR": "127.0.0.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
    }
    if token is not None:
        environ["HTTP_AUTHORIZATION"] = f"Token {token}"
    environ.update(extra)
    return environ


def call(app: Any, body: bytes, *, token: str | None = None, **extra: str) -> Answer:
    got: list[Any] = []
    with _connection_kept():
        result = app(environ_for(body, token=token, **extra), lambda status, headers: got.append((status, headers)))
        try:
            payload = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
    return Answer(got[0][0], got[0][1], payload)


def refuse(environ: dict[str, Any], start_response: Any) -> Any:
    raise AssertionError("handed to Django")


def fast_only() -> OnlineReadFastPath:
    """The fast path with no Django behind it: a request it does not answer itself fails the test."""
    return OnlineReadFastPath(refuse)


def body_of(features: list[str], ids: list[str] | None = None, environment: str = "dev", **extra: Any) -> bytes:
    return json.dumps(
        {"environment": environment, "entity_ids": [ENTITY] if ids is None else ids, "features": features, **extra}
    ).encode()


def assert_alike(fast: Answer, django: Answer) -> None:
    assert fast.status == django.status
    assert fast.body == django.body
    assert set(fast.headers) == set(django.headers)
    for name, value in django.headers.items():
        if name != "x-request-id":
            assert fast.headers[name] == value, name
    assert len(fast.headers["x-request-id"]) == 32


@pytest.fixture
def dev(loaded, isolated_stores):
    env = Environment.objects.get(name="dev")
    run = ProvisioningRun.objects.get(environment=env, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="t") == "succeeded"
    return env


@pytest.fixture
def names(dev) -> list[str]:
    online = sorted(Feature.objects.filter(environment=dev, online=True).values_list("name", flat=True))
    values: dict[str, Any] = {name: 1.5 * i for i, name in enumerate(online)}
    values[online[1]] = "ranging \u2028 é"  # DRF escapes U+2028; the fast path must write it as DRF does
    values[online[2]] = 2.5e-05  # Python writes 2.5e-05, orjson 2.5e-5
    values[online[3]] = 2**70  # past orjson's 64 bits
    store = online_store_for(dev)
    store.write([(ENTITY, NOW, values)])
    store.write([(ENTITY, NOW - dt.timedelta(minutes=3), {online[4]: 7})])  # older: does not replace the value
    return online


@pytest.fixture
def token(users) -> str:
    return ApiToken.issue(user=users["erin"], name="fast")[1]


def test_the_fast_path_answers_the_common_read_as_drf_does(names, token, client_for):
    for features, ids in ((names, [ENTITY]), (names[:5], [ENTITY, UNWRITTEN, ENTITY]), (names[7:9], [UNWRITTEN])):
        body = body_of(features, ids)
        fast = call(fast_only(), body, token=token)
        assert_alike(fast, call(config.wsgi.django_application, body, token=token))
        assert fast.status == "200 OK"
        assert fast.headers["content-type"] == "application/json"
        assert fast.headers["x-frame-options"] == "DENY"
        assert fast.headers["x-content-type-options"] == "nosniff"
        assert fast.headers["referrer-policy"] == "same-origin"
        assert fast.headers["cross-origin-opener-policy"] == "same-origin"
        assert int(fast.headers["content-length"]) == len(fast.body)
        # And as Django's test client sees the DRF path.
        drf = client_for("erin").post(ONLINE_PATH, json.loads(body), format="json")
        assert drf.content == fast.body
    values = call(fast_only(), body_of(names), token=token).json()["results"][0]["values"]
    assert values[names[1]]["value"] == "ranging \u2028 é"
    assert values[names[3]]["value"] == 2**70
    assert values[names[4]] == {"value": 4 * 1.5, "event_time": NOW.isoformat(), "status": "present"}


def test_the_wsgi_application_sends_online_reads_to_the_fast_path(names, token, monkeypatch):
    monkeypatch.setattr(config.wsgi.online_read, "django", refuse)
    assert call(config.wsgi.application, body_of(names[:3]), token=token).status == "200 OK"
    with pytest.raises(AssertionError, match="handed to Django"):
        call(config.wsgi.application, body_of(names[:3], environment="qa"), token=token)
    monkeypatch.undo()
    # Other routes and methods go to Django.
    assert call(config.wsgi.application, b"", token=token, REQUEST_METHOD="OPTIONS").status == "200 OK"
    listed = call(config.wsgi.application, b"", token=token, REQUEST_METHOD="GET", PATH_INFO="/api/v1/environments/")
    assert listed.status == "200 OK"


def test_request_ids_as_the_middleware_gives_them(names, token, monkeypatch):
    seen: list[str | None] = []

    def recording(**kwargs: Any) -> Any:
        seen.append(request_id_var.get())  # what a log record of the read carries (config.logging.ContextFilter)
        return online_features_read(**kwargs)

    monkeypatch.setattr("api.online_fast_path.online_features_read", recording)
    given = call(fast_only(), body_of(names[:2]), token=token, HTTP_X_REQUEST_ID="abc-123")
    assert given.headers["x-request-id"] == "abc-123"
    made = call(fast_only(), body_of(names[:2]), token=token, HTTP_X_REQUEST_ID="not sane!")
    assert made.headers["x-request-id"] != "not sane!"
    assert seen == ["abc-123", made.headers["x-request-id"]]
    assert request_id_var.get() is None
    # Handed over, the request keeps the id the fast path gave it.
    offline = Feature.objects.filter(environment__name="dev", online=False).first().name
    handed = call(config.wsgi.application, body_of([offline]), token=token)
    assert handed.status.startswith("400")
    assert handed.headers["x-request-id"] == seen[-1] != made.headers["x-request-id"]


def _offline(dev: Environment) -> str:
    return Feature.objects.filter(environment=dev, online=False).order_by("name").first().name


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("bad json", "400"),
        ("nan", "400"),
        ("not an object", "400"),
        ("unknown feature", "400"),
        ("offline feature", "400"),
        ("bad entity id", "400"),
        ("no entity ids", "400"),
        ("trimmed entity id", "200"),
        ("unknown environment name", "400"),
        ("environment not in the catalog", "404"),
        ("entities form", "200"),
        ("no token", "401"),
        ("unknown token", "401"),
        ("malformed authorization", "401"),
        ("form body", "200"),
        ("browsable api", "200"),
        ("format in the query", "200"),
        ("host not allowed", "400"),
    ],
)
def test_what_the_fast_path_does_not_answer_django_answers_as_before(dev, names, token, case, status):
    offline = _offline(dev)
    request: dict[str, Any] = {"token": token}
    body = body_of(names[:2])
    if case == "bad json":
        body = b'{"environment": "dev", '
    elif case == "nan":
        body = body.replace(b'"features"', b'"x": NaN, "features"')
    elif case == "not an object":
        body = b"[1, 2]"
    elif case == "unknown feature":
        body = body_of([names[0], "no_such_feature"])
    elif case == "offline feature":
        body = body_of([offline])
    elif case == "bad entity id":
        body = body_of(names[:1], ["NIFTY_2026-11-27_3"])
    elif case == "no entity ids":
        body = body_of(names[:1], [])
    elif case == "trimmed entity id":
        body = body_of(names[:1], [f" {ENTITY} "])
    elif case == "unknown environment name":
        body = body_of(names[:1], environment="qa")
    elif case == "environment not in the catalog":
        Environment.objects.filter(name="staging").delete()
        body = body_of(names[:1], environment="staging")
    elif case == "entities form":
        body = body_of(names[:2], [], entities=[{"symbol": "NIFTY", "ts_minute": NOW.isoformat(), "dte": 3}])
    elif case == "no token":
        request["token"] = None
    elif case == "unknown token":
        request["token"] = "not-a-token"
    elif case == "malformed authorization":
        request = {"HTTP_AUTHORIZATION": f"Token {token} extra"}
    elif case == "form body":
        body = b"environment=dev&entity_ids=" + ENTITY.encode() + b"&features=" + names[0].encode()
        request["CONTENT_TYPE"] = "application/x-www-form-urlencoded"
    elif case == "browsable api":
        request["HTTP_ACCEPT"] = "text/html"
    elif case == "format in the query":
        request["QUERY_STRING"] = "format=json"
    elif case == "host not allowed":
        request["HTTP_HOST"] = "evil.example"

    with pytest.raises(AssertionError, match="handed to Django"):
        call(fast_only(), body, **request)
    handed = call(config.wsgi.application, body, **request)
    direct = call(config.wsgi.django_application, body, **request)
    assert handed.status.split()[0] == status, handed.body[:300]
    if case == "browsable api":  # a page with a CSRF token of its own each time
        assert handed.headers["content-type"] == direct.headers["content-type"] == "text/html; charset=utf-8"
    else:
        assert_alike(handed, direct)
    if case == "entities form":  # the body read by the fast path reached the view
        assert handed.json()["results"][0]["entity_id"] == ENTITY
        assert handed.json() == call(fast_only(), body_of(names[:2]), token=token).json()
    if case == "no token":
        assert handed.headers["www-authenticate"] == "Token"


def test_a_handed_over_request_keeps_its_body(names, token):
    received: list[bytes] = []

    def django(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        received.append(environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"])))
        start_response("200 OK", [])
        return [b""]

    body = body_of(names[:2], [], entities=[{"symbol": "NIFTY", "ts_minute": NOW.isoformat(), "dte": 3}])
    call(OnlineReadFastPath(django), body, token=token)
    call(OnlineReadFastPath(django), body_of(["no_such_feature"]), token=token)
    assert received == [body, body_of(["no_such_feature"])]


def test_revoked_expired_or_deactivated_is_refused_on_the_next_read(users, names, token):
    assert call(fast_only(), body_of(names[:1]), token=token).status == "200 OK"
    assert call(fast_only(), body_of(names[:1]), token=token).status == "200 OK"  # the token's row cached
    ApiToken.objects.filter(user=users["erin"]).update(revoked_at=timezone.now())
    refused = call(config.wsgi.application, body_of(names[:1]), token=token)
    assert refused.status.startswith("401")
    assert refused.json()["message"] == "invalid, expired or revoked token"

    _, expiring = ApiToken.issue(user=users["dave"], name="short", expires_at=timezone.now() + dt.timedelta(hours=1))
    assert call(fast_only(), body_of(names[:1]), token=expiring).status == "200 OK"
    ApiToken.objects.filter(user=users["dave"]).update(expires_at=timezone.now() - dt.timedelta(seconds=1))
    assert call(config.wsgi.application, body_of(names[:1]), token=expiring).status.startswith("401")

    _, carols = ApiToken.issue(user=users["carol"], name="c")
    assert call(fast_only(), body_of(names[:1]), token=carols).status == "200 OK"
    type(users["carol"]).objects.filter(pk=users["carol"].pk).update(is_active=False)
    assert call(config.wsgi.application, body_of(names[:1]), token=carols).status.startswith("401")


def test_a_session_call_from_the_console_is_django_s(users, names, client):
    client.force_login(users["erin"])
    secret = get_random_string(32)
    cookies = f"{client.cookies['sessionid'].key}={client.cookies['sessionid'].value}; csrftoken={secret}"
    extra = {"HTTP_COOKIE": cookies, "HTTP_X_CSRFTOKEN": secret}
    with pytest.raises(AssertionError, match="handed to Django"):
        call(fast_only(), body_of(names[:2]), **extra)
    answer = call(config.wsgi.application, body_of(names[:2]), **extra)
    assert answer.status == "200 OK", answer.body[:300]
    assert answer.body == call(config.wsgi.django_application, body_of(names[:2]), **extra).body


def test_a_database_outage_answers_503_with_retry_after(names, token, monkeypatch):
    attempts: list[int] = []

    def refuse_connection(*args: Any, **kwargs: Any) -> None:
        attempts.append(1)
        raise OperationalError("connection refused")

    monkeypatch.setattr(connections["default"], "cursor", refuse_connection)
    # Answered in front of Django, after one attempt: a database host that does not answer costs one connect
    # timeout, not a second one in Django's path.
    answer = call(config.wsgi.application, body_of(names[:2]), token=token)
    assert len(attempts) == 1
    assert answer.status.startswith("503")
    assert answer.headers["retry-after"] == "5"
    assert answer.json()["code"] == "database_unavailable"
    assert_alike(answer, call(config.wsgi.django_application, body_of(names[:2]), token=token))


def test_https_headers_and_the_ssl_redirect_follow_the_settings(names, token, settings):
    settings.SECURE_HSTS_SECONDS = 3600
    settings.SECURE_SSL_REDIRECT = True
    body = body_of(names[:2])
    secure = call(fast_only(), body, token=token, **{"wsgi.url_scheme": "https", "SERVER_PORT": "443"})
    assert secure.headers["strict-transport-security"] == "max-age=3600"
    # Django's middleware reads the settings when it is made: a handler made under these ones.
    direct = call(WSGIHandler(), body, token=token, **{"wsgi.url_scheme": "https", "SERVER_PORT": "443"})
    assert_alike(secure, direct)
    redirected = call(OnlineReadFastPath(WSGIHandler()), body, token=token)
    assert redirected.status.startswith("301")
    assert redirected.headers["location"] == f"https://testserver{ONLINE_PATH}"


def test_another_middleware_turns_the_fast_path_off(names, token, settings):
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, "django.middleware.gzip.GZipMiddleware"]
    with pytest.raises(AssertionError, match="handed to Django"):
        call(fast_only(), body_of(names[:2]), token=token)
    assert call(config.wsgi.application, body_of(names[:2]), token=token).status == "200 OK"


@pytest.mark.parametrize(
    "value",
    [12.5, 0.0, -0.0, 1e-4, 9.99e-5, 2.5e-9, 1e16, 1.5e300, 2**63 - 1, 2**64, -(2**70), True, None, "a\u2029b", "é"],
)
def test_bodies_are_drf_s_byte_for_byte(value):
    rows = [OnlineRow(ENTITY, {"f": OnlineValue(value, NOW, "present"), "g": OnlineValue(None, None, "missing")})]
    data = {"results": [row.as_dict() for row in rows]}
    assert render(data, rows) == JSONRenderer().render(data)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_value_json_cannot_hold_fails_as_in_drf(value):
    rows = [OnlineRow(ENTITY, {"f": OnlineValue(value, NOW, "present")})]
    data = {"results": [row.as_dict() for row in rows]}
    with pytest.raises(ValueError, match="Out of range float"):
        JSONRenderer().render(data)
    with pytest.raises(ValueError, match="Out of range float"):
        render(data, rows)
