"""A paced load generator for the console on loopback, bounded in time and in count (issue 6's load test).

`paced_load` offers a fixed rate: request i is due at start + i / rate, whoever sends it; `connections` threads,
each with one keep-alive HTTP/1.1 connection, take the next due request, wait for its time and send it. Latency is
counted from when the request was due, not from when it was sent, so a server that stalls is charged for the
requests that queued behind the stall (no coordinated omission, as wrk2 counts). A request is an error when it
gets another status than expected, fails or times out; the connection is then opened again.

`online_read_load` drives `POST /api/v1/online-features/` (one random entity, the given features a request);
`api_load` any list of requests. Both return a `LoadFigures` (`.as_dict()` for a report):

    from bench.load import online_read_load
    figures = online_read_load("http://127.0.0.1:8000", token, entity_ids, features, rate=1000, seconds=10)

`wrk_max_throughput` runs wrk (unpaced) for the highest throughput when wrk is installed. `Gunicorn` (a WSGI app)
and `Uvicorn` (an ASGI app) serve an app on a free loopback port for a run. As a command:

    .venv/bin/python bench/load.py --url http://127.0.0.1:8000 --token ... --rate 1000 --seconds 10 \\
        --entity NIFTY_202611270915_3 --feature atm_iv ...
"""

import argparse
import http.client
import itertools
import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ONLINE_PATH = "/api/v1/online-features/"
# How scripts/run-console.sh serves the console (gthread: keep-alive connections, threads overlap the database).
GUNICORN_ARGS = "--workers 2 --threads 4"


@dataclass(frozen=True)
class LoadRequest:
    method: str
    path: str
    body: bytes | None = None
    expect: int = 200


@dataclass
class LoadFigures:
    """What a load run measured; latencies in milliseconds from when each request was due."""

    offered_rate: float
    seconds: float
    requests: int
    errors: int
    rate: float  # completed requests a second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}

    def line(self) -> str:
        return (
            f"{self.requests} requests in {self.seconds:.1f} s ({self.offered_rate:.0f}/s offered): {self.rate:.0f}/s, "
            f"p50 {self.p50_ms:.2f} ms, p90 {self.p90_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, max {self.max_ms:.1f} ms, "
            f"{self.errors} errors ({self.error_rate:.2%})"
        )


def _percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def paced_load(
    base_url: str,
    requests: Sequence[LoadRequest],
    *,
    rate: float,
    seconds: float,
    headers: dict[str, str] | None = None,
    connections: int = 16,
    max_requests: int | None = None,
    timeout: float = 5.0,
) -> LoadFigures:
    """Offers `rate` requests a second for `seconds` (at most `max_requests`), cycling through `requests`."""
    if rate <= 0 or seconds <= 0 or not requests:
        raise ValueError("rate and seconds must be positive, and requests not empty")
    url = urllib.parse.urlsplit(base_url)
    if url.scheme != "http" or not url.hostname:
        raise ValueError(f"{base_url!r}: only http://host:port URLs")
    host, port = url.hostname, url.port or 80
    total = int(rate * seconds)
    if max_requests is not None:
        total = min(total, max_requests)
    sent_headers = {"Content-Type": "application/json", **(headers or {})}
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    error_samples: list[str] = []
    errors = 0
    start = time.perf_counter() + 0.05  # every thread ready before the first request is due

    def record(latency: float, status: str, error: str | None) -> None:
        nonlocal errors
        with lock:
            latencies.append(latency)
            statuses[status] = statuses.get(status, 0) + 1
            if error is not None:
                errors += 1
                if len(error_samples) < 5:
                    error_samples.append(error)

    def client() -> None:
        connection: http.client.HTTPConnection | None = None
        try:
            while True:
                i = next(counter)
                if i >= total:
                    return
                request = requests[i % len(requests)]
                due = start + i / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection(host, port, timeout=timeout)
                    connection.request(request.method, request.path, body=request.body, headers=sent_headers)
                    response = connection.getresponse()
                    payload = response.read()
                    status = str(response.status)
                    error = None
                    if response.status != request.expect:
                        error = f"{request.method} {request.path}: {response.status} {payload[:200]!r}"
                    if response.will_close:
                        connection.close()
                        connection = None
                except (OSError, http.client.HTTPException) as failure:
                    status, error = type(failure).__name__, f"{request.method} {request.path}: {failure!r}"
                    if connection is not None:
                        connection.close()
                    connection = None
                record(time.perf_counter() - due, status, error)
        finally:
            if connection is not None:
                connection.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(max(1, connections))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(time.perf_counter() - start, 1e-9)
    ordered = sorted(latencies)
    return LoadFigures(
        offered_rate=rate,
        seconds=elapsed,
        requests=len(ordered),
        errors=errors,
        rate=len(ordered) / elapsed,
        p50_ms=_percentile(ordered, 0.50) * 1e3,
        p90_ms=_percentile(ordered, 0.90) * 1e3,
        p99_ms=_percentile(ordered, 0.99) * 1e3,
        max_ms=(ordered[-1] if ordered else 0.0) * 1e3,
        statuses=statuses,
        error_samples=error_samples,
    )


def online_read_requests(
    entity_ids: Sequence[str], features: Sequence[str], *, environment: str = "dev", count: int = 1000, seed: int = 5
) -> list[LoadRequest]:
    """`count` reads of one random entity (of `entity_ids`) and `features` each."""
    rng = random.Random(seed)
    return [
        LoadRequest(
            "POST",
            ONLINE_PATH,
            json.dumps(
                {"environment": environment, "entity_ids": [rng.choice(entity_ids)], "features": list(features)}
            ).encode(),
        )
        for _ in range(count)
    ]


def online_read_load(
    base_url: str,
    token: str,
    entity_ids: Sequence[str],
    features: Sequence[str],
    *,
    rate: float = 1000,
    seconds: float = 10,
    environment: str = "dev",
    connections: int = 16,
    max_requests: int | None = None,
    warmup_seconds: float = 1.0,
) -> LoadFigures:
    """The online read endpoint at a paced `rate` for `seconds`: figures and errors (issue 6: none at 1,000/s),
    after `warmup_seconds` not counted."""
    return api_load(
        base_url,
        token,
        online_read_requests(entity_ids, features, environment=environment),
        rate=rate,
        seconds=seconds,
        connections=connections,
        max_requests=max_requests,
        warmup_seconds=warmup_seconds,
    )


def api_load(
    base_url: str,
    token: str,
    requests: Sequence[LoadRequest],
    *,
    rate: float,
    seconds: float,
    connections: int = 16,
    max_requests: int | None = None,
    warmup_seconds: float = 1.0,
) -> LoadFigures:
    """Any REST API requests (e.g. `LoadRequest("GET", "/api/v1/features/?environment=dev")`) at a paced rate,
    after a warm-up of `warmup_seconds` at up to 200/s that is not counted: each server thread's first requests
    import the URL configuration and the views and open their connections, which takes seconds on a busy machine
    and is not what a load test measures."""
    headers = {"Authorization": f"Token {token}"}
    if warmup_seconds > 0:
        paced_load(
            base_url, requests, rate=min(rate, 200), seconds=warmup_seconds, headers=headers, connections=connections
        )
    return paced_load(
        base_url,
        requests,
        rate=rate,
        seconds=seconds,
        headers=headers,
        connections=connections,
        max_requests=max_requests,
    )


WRK_SCRIPT = """
local bodies = {%(bodies)s}
local counter = 0
wrk.method = "%(method)s"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Token %(token)s"
request = function()
  counter = counter + 1
  return wrk.format(nil, "%(path)s", nil, bodies[(counter %% #bodies) + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, '
    .. '"max_us": %%d, "errors": %%d}\\n', summary.requests, summary.duration, latency:percentile(50),
    latency:percentile(90), latency:percentile(99), latency.max, e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk_max_throughput(
    base_url: str, token: str, requests: Sequence[LoadRequest], *, seconds: int = 10, connections: int = 8
) -> LoadFigures | None:
    """The highest throughput wrk gets (unpaced, `connections` keep-alive connections); None without wrk.
    Latencies are wrk's (from each send: under saturation they show the service time, not the queueing)."""
    if shutil.which("wrk") is None:
        return None
    methods = {r.method for r in requests}
    paths = {r.path for r in requests}
    if len(methods) != 1 or len(paths) != 1:
        raise ValueError("wrk_max_throughput takes requests of one method and path")
    bodies = ", ".join("[[" + (r.body or b"").decode() + "]]" for r in requests)
    with tempfile.TemporaryDirectory(prefix="fcc-wrk-") as work:
        script = Path(work) / "load.lua"
        script.write_text(WRK_SCRIPT % {"bodies": bodies, "method": methods.pop(), "path": paths.pop(), "token": token})
        output = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(script), base_url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK "))
    got = json.loads(line[4:])
    elapsed = got["duration_us"] / 1e6
    return LoadFigures(
        offered_rate=0.0,
        seconds=elapsed,
        requests=got["requests"],
        errors=got["errors"],
        rate=got["requests"] / elapsed,
        p50_ms=got["p50_us"] / 1e3,
        p90_ms=got["p90_us"] / 1e3,
        p99_ms=got["p99_us"] / 1e3,
        max_ms=got["max_us"] / 1e3,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Gunicorn:
    """A gunicorn serving `app` on a free loopback port, as a context manager: started and waited for (any HTTP
    answer to GET `ready_path`), then stopped by its own process id. `url` is its base URL."""

    server = "gunicorn"

    def __init__(
        self,
        app: str = "config.wsgi:application",
        *,
        env: Mapping[str, str] | None = None,
        args: str = GUNICORN_ARGS,
        log: Path | None = None,
        ready_path: str = "/api/v1/",
        start_timeout: float = 60,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = self._command(app, args)
        self.env = dict(env if env is not None else os.environ)
        if log is None:
            handle, name = tempfile.mkstemp(prefix="fcc-gunicorn-", suffix=".log")
            os.close(handle)
            log = Path(name)
        self.log_path = log
        self.ready_path = ready_path
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self, app: str, args: str) -> list[str]:
        return [
            str(Path(sys.executable).with_name("gunicorn")),
            app,
            "--bind",
            f"127.0.0.1:{self.port}",
            "--log-level",
            "warning",
            "--pythonpath",
            f"{ROOT},{ROOT / 'bench'}",
            *shlex.split(args),
        ]

    def __enter__(self) -> "Gunicorn":
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", self.ready_path)
                connection.getresponse().read()
                connection.close()
                return self
            except (OSError, http.client.HTTPException) as error:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"{self.server} {self.command[1]} did not answer: {error!r}; see {self.log_path}"
                    ) from None
                time.sleep(0.2)

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def workers_of(gunicorn_args: str) -> int:
    """The worker count of gunicorn options (1, gunicorn's default, without one)."""
    words = shlex.split(gunicorn_args)
    for i, word in enumerate(words):
        if word in ("--workers", "-w") and i + 1 < len(words):
            return int(words[i + 1])
        if word.startswith("--workers="):
            return int(word.partition("=")[2])
    return 1


class Uvicorn(Gunicorn):
    """An ASGI `app` under uvicorn (uvloop and httptools, no access log, as gunicorn runs here), `workers`
    processes, on a free loopback port; started, waited for and stopped as Gunicorn is."""

    server = "uvicorn"

    def __init__(self, app: str, *, workers: int = 1, **kwargs: Any) -> None:
        self.workers = workers
        super().__init__(app, **kwargs)

    def _command(self, app: str, args: str) -> list[str]:
        return [
            str(Path(sys.executable).with_name("uvicorn")),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--log-level",
            "warning",
            "--no-access-log",
            "--app-dir",
            str(ROOT),
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="the console, e.g. http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--environment", default="dev")
    parser.add_argument("--entity", action="append", required=True, help="an entity id (repeat)")
    parser.add_argument("--feature", action="append", required=True, help="an online feature (repeat)")
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    figures = online_read_load(
        args.url,
        args.token,
        args.entity,
        args.feature,
        rate=args.rate,
        seconds=args.seconds,
        environment=args.environment,
        connections=args.connections,
    )
    print(figures.line())
    print(json.dumps(figures.as_dict()))


if __name__ == "__main__":
    main()
