"""PostgreSQL unavailable, and restarted under load.

In process (both configurations): a database error in a view, a DRF view or a middleware answers 503 with
Retry-After and the standard error body, not a 500 with a traceback.

End to end (a PostgreSQL cluster of the test's own, so it can be restarted without disturbing anyone): gunicorn
serves the console under a stream of requests and a Celery worker applies a provisioning run while PostgreSQL
stops and starts again. Requests during the outage get 503; the service recovers by itself once PostgreSQL is
back (no restart of gunicorn or of the worker); the worker finishes the run it was applying and the next one.
"""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError, connections

from tests.faults import PostgresCluster, free_port, log_tail, postgres_cluster, soak_record, wait_for

ROOT = Path(settings.BASE_DIR)
# As scripts/run-console.sh serves the console.
GUNICORN = str(Path(sys.executable).with_name("gunicorn"))
GUNICORN_OPTIONS = ["--workers", "2", "--threads", "4", "--graceful-timeout", "5"]
WORKER = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "provisioning", "--pool", "solo"]
WORKER += ["--loglevel", "INFO", "--without-heartbeat", "--without-mingle", "--without-gossip"]
REFUSED = 'connection failed: connection to server at "127.0.0.1", port 5432 failed: Connection refused'


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.content[:500]
    assert response["Retry-After"] == "5"
    body = json.loads(response.content)
    assert set(body) == {"code", "message", "errors"}
    assert body["code"] == "database_unavailable"
    assert "retry" in body["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/api/v1/features/?environment=dev", "/api/v1/environments/", "/healthz", "/runs/"])
def test_a_database_error_in_a_view_answers_503(users, client_for, monkeypatch, path):
    client = client_for("erin")
    client.force_login(users["erin"])  # the console's pages read the session from the database too

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError(REFUSED)

    monkeypatch.setattr(connections["default"], "cursor", refuse)
    _assert_unavailable(client.get(path))


@pytest.mark.django_db
def test_a_database_error_in_a_middleware_answers_503(users, client, monkeypatch):
    """The session is saved after the view, by a middleware: its error reaches handler500."""
    from django.contrib.sessions.backends.db import SessionStore

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise OperationalError(REFUSED)

    monkeypatch.setattr(SessionStore, "save", refuse)
    client.raise_request_exception = False
    response = client.post("/accounts/login/", {"username": "erin", "password": "pw-erin"})
    _assert_unavailable(response)


# End to end ----------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    started: float
    path: str
    status: int  # 0: no HTTP answer at all
    detail: str


class RequestStream:
    """Threads sending requests back to back, each outcome recorded with its start time."""

    PATHS = ["/api/v1/features/?environment=dev&page_size=5", "/api/v1/provisioning-runs/", "/healthz"]

    def __init__(self, base: str, token: str, threads: int = 4) -> None:
        self.base, self.token, self.threads = base, token, threads
        self.outcomes: list[Outcome] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> "RequestStream":
        for worker in self.workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)

    def _loop(self, n: int) -> None:
        i = n
        while not self.stop.is_set():
            path = self.PATHS[i % len(self.PATHS)]
            i += 1
            started = time.monotonic()
            request = _request(self.base + path, self.token)
            try:
                with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310 (our own server)
                    status, detail = response.status, ""
                    response.read()
            except urllib.error.HTTPError as error:
                status, detail = error.code, _describe(error)
            except OSError as error:
                status, detail = 0, f"{type(error).__name__}: {error}"
            with self.lock:
                self.outcomes.append(Outcome(started, path, status, detail))

    def since(self, moment: float) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if o.started >= moment]


def _request(url: str, token: str, method: str = "GET", body: Any = None) -> urllib.request.Request:
    return urllib.request.Request(  # noqa: S310 (http:// to the test's own server)
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )


def _describe(error: urllib.error.HTTPError) -> str:
    """'ok' for a 503 as it must be (standard body, Retry-After), else what was wrong with the answer."""
    raw = error.read()
    try:
        body = json.loads(raw)
    except ValueError:
        return f"not JSON: {raw[:200]!r}"
    if error.code == 503:
        if set(body) != {"code", "message", "errors"} or body["code"] != "database_unavailable":
            return f"503 with another body: {body}"
        if error.headers.get("Retry-After") != "5":
            return "503 without Retry-After"
        return "ok"
    return f"{error.code}: {body}"


SETUP = """
import io, json
from django.contrib.auth import get_user_model
from django.core.management import call_command
from api.models import ApiToken
call_command("migrate", "--noinput", verbosity=0)
call_command("create_demo_users", stdout=io.StringIO())
users = get_user_model().objects
names = ("viewer", "ci-registrar", "owner-c1")
tokens = {n: ApiToken.issue(user=users.get(username=n), name="fault test")[1] for n in names}
call_command("load_catalog", "--env", "dev", stdout=io.StringIO())
print(json.dumps(tokens))
"""


def _setup(env: dict[str, str]) -> dict[str, str]:
    """One process (Django starts in seconds on a busy machine): the schema, users, tokens, and run 1 queued."""
    done = subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", SETUP], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    tokens: dict[str, str] = json.loads(done.stdout.strip().splitlines()[-1])
    return tokens


def _call(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = _request(base + path, token, method, body)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def _change_c1(base: str, tokens: dict[str, str]) -> None:
    """A change request submitted by CI and approved by c1's owner over HTTP, after the restart: run 2."""
    from catalog.specs import load_spec_files

    c1 = next(s for s in load_spec_files(Path(settings.FCC_SPECS_DIR)) if s["component"] == "c1")
    c1["features"].append(
        {
            "name": "after_the_restart",
            "dtype": "float64",
            "description": "Added after PostgreSQL restarted.",
            "ttl": "48h",
            "online": False,
            "source": "component_01.afterTheRestart",
            "tags": ["minute"],
        }
    )
    status, body = _call(
        base,
        tokens["ci-registrar"],
        "POST",
        "/api/v1/change-requests/",
        {"environment": "dev", "title": "t", "specs": [c1]},
    )
    assert status == 201, body
    cr = body["change_request"]["id"]
    status, body = _call(base, tokens["owner-c1"], "POST", f"/api/v1/change-requests/{cr}/approve/", {"comment": "ok"})
    assert status == 200, body


def _runs(base: str, token: str) -> list[dict[str, Any]]:
    request = _request(base + "/api/v1/provisioning-runs/", token)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            results: list[dict[str, Any]] = json.loads(response.read())["results"]
            return results
    except OSError:
        return []


@pytest.mark.worker
def test_postgresql_restarted_under_load(tmp_path):
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("the PostgreSQL restart test runs in the PostgreSQL configuration")
    with postgres_cluster() as cluster:
        _restart_under_load(cluster, tmp_path)


def _restart_under_load(cluster: PostgresCluster, tmp_path: Path) -> None:
    import psycopg

    with psycopg.connect(cluster.url(), autocommit=True) as admin:
        admin.execute("CREATE DATABASE fcc")
    data_dir = tmp_path / "data"
    env = {
        **os.environ,
        "DATABASE_URL": cluster.url("fcc"),
        "DATA_DIR": str(data_dir),
        "CELERY_BROKER_URL": "filesystem://localhost/",
        "FCC_STORES": json.dumps({"dev": {"offline_options": {"path": str(tmp_path / "offline")}}}),
        "FCC_STEP_BACKOFF_SECONDS": "0.05",
        "FCC_RUN_STALE_SECONDS": "3",
        "FCC_REAPER_SECONDS": "1",
        "FCC_ONLINE_SYNC_SECONDS": "3600",
        "FCC_DRIFT_SECONDS": "3600",
    }
    # Before the worker starts: run 1 must still be in progress when the request stream stops PostgreSQL.
    tokens = _setup(env)
    token = tokens["viewer"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "services.log"
    log = log_path.open("ab")
    gunicorn = subprocess.Popen(
        [GUNICORN, "config.wsgi:application", "--bind", f"127.0.0.1:{port}", *GUNICORN_OPTIONS],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [*WORKER, "--beat", "--schedule", str(tmp_path / "beat")],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: _up(base), 60, "gunicorn", lambda: log_tail(log_path))
        with RequestStream(base, token) as stream:
            # Run 1 (the catalog loaded into dev) is being applied by the worker when PostgreSQL goes.
            wait_for(lambda: any(r["state"] == "running" for r in _runs(base, token)), 60, "run 1 to start")
            down_at = time.monotonic()
            cluster.stop("fast")
            time.sleep(2.5)
            cluster.start()
            back_at = time.monotonic()
            time.sleep(5.0)
        recovered = [o for o in stream.since(back_at) if o.status == 200]
        assert recovered, "no request succeeded after PostgreSQL came back"
        recovery = recovered[0].started - back_at
        wait_for(
            lambda: [r["state"] for r in _runs(base, token)] == ["succeeded"],
            120,
            "run 1 to succeed",
            lambda: f"{_runs(base, token)}\n{log_tail(log_path)}",
        )
        _change_c1(base, tokens)
        wait_for(
            lambda: [r["state"] for r in _runs(base, token)] == ["succeeded", "succeeded"],
            120,
            "run 2 to succeed",
            lambda: f"{_runs(base, token)}\n{log_tail(log_path)}",
        )
        runs = _runs(base, token)
        assert gunicorn.poll() is None, "gunicorn exited"
        assert worker.poll() is None, "the worker exited"
    finally:
        for process in (gunicorn, worker):
            process.terminate()
        for process in (gunicorn, worker):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        log.close()

    outcomes = stream.outcomes
    wrong = [o for o in outcomes if o.status not in (200, 503) or (o.status == 503 and o.detail != "ok")]
    assert not wrong, f"{len(wrong)} answers were neither 200 nor a proper 503: {wrong[:5]}\n{log_tail(log_path)}"
    unavailable = [o for o in outcomes if o.status == 503]
    assert unavailable, "no request saw the outage"
    # A request in flight when PostgreSQL stopped (on a busy machine: started seconds before) may get a 503 too.
    assert all(o.started <= back_at for o in unavailable), "a 503 for a request sent after PostgreSQL was back"
    after = stream.since(back_at + 1.0)
    assert after
    assert all(o.status == 200 for o in after)
    assert recovery < 5.0, f"first success {recovery:.1f} s after PostgreSQL was back"
    # Run 1's task failed with the connection; the reaper put the run back and a second claim finished it.
    first = runs[-1]
    assert first["attempts"] >= 1
    soak_record(
        "postgres-restart",
        requests=len(outcomes),
        ok=sum(o.status == 200 for o in outcomes),
        unavailable_503=len(unavailable),
        other_failures=len(wrong),
        outage_s=round(back_at - down_at, 1),
        recovery_s=round(recovery, 2),
        run1_attempts=first["attempts"],
        runs_converged=len(runs),
    )


def _up(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=5) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:
        return False
