"""The REST API against its own OpenAPI document (drf-spectacular, /api/schema/), in process over WSGI.

schemathesis generates requests for every operation and method the document lists, valid ones (positive) and
ones that break it (negative), sends them with a token, and checks each answer: never a 5xx, a documented status
code, a documented content type, and a body matching the documented schema (error bodies included). It runs as
an admin (everything allowed), as a viewer (writes refused: 403) and without a token (401).

Path ids are generated, and also taken from the objects the fixture creates, so detail endpoints answer with
real objects too. Reproducible: hypothesis runs derandomized (the same cases on every run, on both databases)
and without its example database; the number of cases sent is counted and asserted.
"""

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.models import ApiToken
from catalog.models import Approval, AuditLogEntry, ChangeRequest, Environment, Feature
from provisioning.drift import drift_detect
from provisioning.models import Backfill, ProvisioningRun, TrainingDataset
from tests.conftest import mini_spec

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
# Examples per operation and generation mode: 37 operations x 2 modes x 15 = 1,110 cases as admin, 370 as a
# viewer, 74 without a token.
EXAMPLES = {"admin": 15, "viewer": 5, "anonymous": 1}


def _wsgi_app() -> Callable[[dict[str, Any], Any], list[bytes]]:
    """The console's WSGI application as served (config.wsgi: the online read's fast path in front of Django). As
    with Django's test client, a request must not close the database connection when it starts or finishes: that
    connection holds the test's transaction."""
    from config.wsgi import application as handler

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            result = handler(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)  # the fast path answers a plain list
                if close is not None:
                    close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)

    return app


@pytest.fixture
def api_schema(db: None) -> Any:
    return schemathesis.openapi.from_wsgi("/api/schema/", _wsgi_app())


@pytest.fixture
def known_ids(
    loaded: None, users: dict[str, Any], client_for: Callable[[str | None], Any], isolated_stores: Any, tmp_path: Path
) -> dict[str, list[Any]]:
    """Real objects for the detail endpoints, per path prefix: a proposed change request, a failed run (retry
    answers 202), a pending backfill, a finished training dataset with its Parquet result and a queued one."""
    response = client_for("dave").post(
        "/api/v1/change-requests/", {"environment": "dev", "specs": [mini_spec()]}, format="json"
    )
    assert response.status_code == 201, response.content
    dev = Environment.objects.get(name="dev")
    run = ProvisioningRun.objects.filter(environment=dev).first()
    assert run is not None
    ProvisioningRun.objects.filter(pk=run.pk).update(state=ProvisioningRun.State.FAILED, error="injected")
    backfill = Backfill.objects.create(environment=dev, source=str(tmp_path), reason="test", requested_by=users["bob"])
    result = tmp_path / "result.parquet"
    pq.write_table(pa.table({"symbol": ["NIFTY"], "c1_alpha": [1.5]}), result)
    done = TrainingDataset.objects.create(
        environment=dev,
        requested_by=users["root"],
        entity_file=str(result),
        state=TrainingDataset.State.SUCCEEDED,
        result_path=str(result),
        result_rows=1,
        result_bytes=result.stat().st_size,
    )
    queued = TrainingDataset.objects.create(environment=dev, requested_by=None, entity_file=str(result))
    token, _ = ApiToken.issue(user=users["bob"], name="bob's")
    drift_detect(environment=dev, trigger="on_demand")
    return {
        "/api/v1/features/": [Feature.objects.filter(environment=dev).order_by("pk").values_list("pk", flat=True)[0]],
        "/api/v1/change-requests/": [ChangeRequest.objects.get().pk],
        "/api/v1/provisioning-runs/": [run.pk],
        "/api/v1/backfills/": [backfill.pk],
        "/api/v1/training-datasets/": [done.pk, queued.pk],
        "/api/v1/tokens/": [token.pk],
        "/api/v1/audit-log/": [AuditLogEntry.objects.order_by("pk").values_list("pk", flat=True)[0]],
        "/api/v1/components/": ["c1"],
        "/api/v1/teams/": ["team-straddle"],
    }


class TokenAuth:
    """A live token of `user` for every case: a generated `POST /tokens/{id}/revoke/` may revoke the one in use,
    so it is re-issued whenever it stopped working."""

    def __init__(self, user: Any) -> None:
        self.user = user
        self.token: ApiToken | None = None
        self.secret = ""

    def __call__(self) -> dict[str, str]:
        if self.token is None or not ApiToken.objects.filter(pk=self.token.pk, revoked_at__isnull=True).exists():
            self.token, self.secret = ApiToken.issue(user=self.user, name="schemathesis")
        return {"Authorization": f"Token {self.secret}"}


def _strategy(operation: Any, mode: GenerationMode, known_ids: dict[str, list[Any]]) -> Any:
    """Generated cases, and cases whose path names a real object (the rest of the request still generated)."""
    strategies = [operation.as_strategy(generation_mode=mode)]
    names = [p.name for p in operation.path_parameters]
    if len(names) == 1:
        for prefix, values in known_ids.items():
            if operation.path.startswith(prefix):
                strategies += [
                    operation.as_strategy(generation_mode=mode, path_parameters={names[0]: v}) for v in values
                ]
    return st.one_of(strategies)


def _fuzz(strategy: Any, examples: int, run: Callable[[Any], None]) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def check(case: Any) -> None:
        run(case)

    check()


def _run(
    api_schema: Any, headers: Callable[[], dict[str, str]], examples: int, known_ids: dict[str, list[Any]]
) -> dict[str, Counter[int]]:
    """Every operation in both generation modes. Returns the status codes answered, per operation."""
    answered: dict[str, Counter[int]] = {}
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 37, "operations disappeared from the OpenAPI document"

    def run(case: Any) -> None:
        # Each request in a savepoint, as each runs in its own transaction in production: on PostgreSQL, a
        # failed statement must not abort the test's transaction and fail every later case with it.
        with transaction.atomic():
            response = case.call(headers=headers())
        case.validate_response(response, checks=CHECKS, headers=headers())
        answered.setdefault(case.operation.label, Counter())[response.status_code] += 1

    for operation in operations:
        for mode in MODES:
            try:
                _fuzz(_strategy(operation, mode, known_ids), examples, run)
            except (Exception, BaseExceptionGroup) as error:  # noqa: BLE001 - report every operation's failure
                failures.append(f"{operation.label} [{mode.value}]: {error}")
    assert not failures, "\n\n".join(failures)
    return answered


def _report(capsys: Any, who: str, answered: dict[str, Counter[int]], started: float) -> int:
    total = sum(sum(c.values()) for c in answered.values())
    statuses = sum(answered.values(), Counter())
    with capsys.disabled():
        sys.stdout.write(
            f"\nschemathesis as {who}: {total} cases, {len(answered)} operations, "
            f"{time.monotonic() - started:.1f} s; statuses {dict(sorted(statuses.items()))}\n"
        )
    return total


def test_every_operation_documents_the_error_body(api_schema):
    document = api_schema.raw_schema
    error = document["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"code", "message", "errors"}
    assert document["components"]["schemas"]["Problem"]["required"] == ["detail", "path", "rule"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for code in ("401", "403", *(c for c in responses if c.startswith("4"))):
                schema = responses[code]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)
    for action in ("approve", "reject", "replan", "promote"):
        assert "409" in document["paths"][f"/api/v1/change-requests/{{id}}/{action}/"]["post"]["responses"]


@pytest.mark.django_db
def test_every_operation_conforms_as_admin(api_schema, known_ids, users, capsys):
    started = time.monotonic()
    answered = _run(api_schema, TokenAuth(users["root"]), EXAMPLES["admin"], known_ids)
    total = _report(capsys, "admin", answered, started)
    assert total >= 1000
    statuses = sum(answered.values(), Counter())
    assert statuses[401] == 0, "the admin's token stopped working"
    # The cases reached the views: every read answered with a success at least once, and writes did too.
    succeeded = {label for label, codes in answered.items() if any(200 <= code < 300 for code in codes)}
    reads = {label for label in answered if label.startswith("GET ")}
    assert reads <= succeeded, sorted(reads - succeeded)
    assert len(succeeded - reads) >= 5, sorted(succeeded - reads)


@pytest.mark.django_db
def test_every_operation_conforms_as_viewer(api_schema, known_ids, users, capsys):
    started = time.monotonic()
    answered = _run(api_schema, TokenAuth(users["erin"]), EXAMPLES["viewer"], known_ids)
    _report(capsys, "viewer", answered, started)
    statuses = sum(answered.values(), Counter())
    assert statuses[401] == 0
    assert statuses[403] > 0, "a viewer was never refused"
    # A viewer reads the catalog but never changes it (their own API tokens aside).
    assert not ChangeRequest.objects.filter(author=users["erin"]).exists()
    assert not Approval.objects.filter(user=users["erin"]).exists()
    assert ChangeRequest.objects.get().state == ChangeRequest.State.PROPOSED


@pytest.mark.django_db
def test_every_operation_conforms_without_a_token(api_schema, known_ids, capsys):
    started = time.monotonic()
    answered = _run(api_schema, dict, EXAMPLES["anonymous"], known_ids)
    _report(capsys, "anonymous", answered, started)
    statuses = sum(answered.values(), Counter())
    assert set(statuses) <= {401, 404}, statuses  # 404: a path that matches no route
    assert statuses[401] > 0
