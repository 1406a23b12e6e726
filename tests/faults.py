"""Fault injection for the fault tests: a Redis and a PostgreSQL of the test's own (so they can be restarted
without disturbing anyone else's), a fault-injecting HTTP proxy, and figures for `make soak` (bench/soak.py).

Servers listen on 127.0.0.1 on ports the system picks; their data lives in the test's temporary folder.
"""

import contextlib
import glob
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for(predicate: Any, timeout: float, what: str, detail: Any = None, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(interval)
    extra = f"\n{detail()}" if callable(detail) else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")


def soak_record(scenario: str, **figures: Any) -> None:
    """Appends one line of figures to $FCC_SOAK_REPORT (set by bench/soak.py); nothing otherwise."""
    target = os.environ.get("FCC_SOAK_REPORT")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as report:
        report.write(json.dumps({"scenario": scenario, **figures}, default=str) + "\n")


def log_tail(path: Path, lines: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# Redis ------------------------------------------------------------------------------------------------------


class RedisServer:
    """A redis-server of the test's own. With `appendonly` every write is in the append-only file, so queued
    messages (and Celery's unacknowledged ones) survive a restart."""

    def __init__(self, workdir: Path, *, appendonly: bool = True) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed")
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--dir", str(self.workdir), "--logfile", str(self.log)]
        command += ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_for(self.ping, 20, f"redis-server on port {self.port}", lambda: log_tail(self.log))

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> Any:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        self.process.send_signal(sig)
        self.process.wait(timeout=20)
        self.process = None

    def restart(self, down_seconds: float, sig: int = signal.SIGTERM) -> float:
        """Stops the server, keeps it down this long, starts it again; returns the outage in seconds."""
        started = time.monotonic()
        self.stop(sig)
        time.sleep(down_seconds)
        self.start()
        return time.monotonic() - started


@contextmanager
def redis_server(workdir: Path, *, appendonly: bool = True) -> Iterator[RedisServer]:
    server = RedisServer(workdir, appendonly=appendonly)
    server.start()
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


# PostgreSQL -------------------------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """A PostgreSQL cluster of the test's own, run as the `postgres` OS user when the test runs as root."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            pytest.skip("PostgreSQL server binaries (initdb) are not installed")
        self.bindir = bindir
        # Not under pytest's temporary folder: that one is private to the user running the tests.
        workdir = Path(tempfile.mkdtemp(prefix="fcc-pg-"))
        self.workdir = workdir
        self.data = workdir / "pgdata"
        self.log = workdir / "postgres.log"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                pytest.skip("running as root without runuser: cannot start PostgreSQL as the postgres user")
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def url(self, database: str = "postgres") -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str, timeout: float = 120) -> None:
        done = subprocess.run([*self.as_user, *command], capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{command[0]} failed ({done.returncode}): {done.stderr.strip()}\n{log_tail(self.log)}")

    def init(self) -> None:
        if self.as_user:
            shutil.chown(self.workdir, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        options += " -c max_connections=60"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast` disconnects every client and stops; `immediate` is a crash (recovery at the next start)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(RuntimeError):  # already down
            cluster.stop("immediate")
        shutil.rmtree(cluster.workdir, ignore_errors=True)


# A fault-injecting HTTP proxy ----------------------------------------------------------------------------------


@dataclass
class FaultPlan:
    """What the proxy does to the requests it forwards: answers a share of them with an error of its own
    (500 or 503, as BigQuery's front end does), and holds a share past the client's timeout."""

    error_share: float = 0.0
    delay_share: float = 0.0
    delay_seconds: float = 0.0
    seed: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"forwarded": 0, "errors": 0, "delayed": 0})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)

    def draw(self) -> str:
        with self.lock:
            roll = self.random.random()
            if roll < self.error_share:
                action = "errors"
            elif roll < self.error_share + self.delay_share:
                action = "delayed"
            else:
                action = "forwarded"
            self.counts[action] += 1
            return action

    def set(self, *, error_share: float, delay_share: float = 0.0) -> None:
        with self.lock:
            self.error_share, self.delay_share = error_share, delay_share


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream: str
    plan: FaultPlan

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        action = self.plan.draw()
        if action == "errors":
            status = self.plan.random.choice([500, 503])
            reason = "backendError" if status == 500 else "backendUnavailable"
            message = "Injected fault: the service is unavailable." if status == 503 else "Injected fault."
            payload = json.dumps(
                {"error": {"code": status, "message": message, "errors": [{"message": message, "reason": reason}]}}
            ).encode()
            self._reply(status, [("Content-Type", "application/json; charset=UTF-8")], payload)
            return
        if action == "delayed":
            time.sleep(self.plan.delay_seconds)
        target = urlsplit(self.upstream)
        connection = http.client.HTTPConnection(target.netloc, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_HEADERS | {"host"}}
            connection.request(self.command, self.path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS | {"content-length"}]
            self._reply(response.status, kept, data)
        finally:
            connection.close()

    def _reply(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        try:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (its timeout passed while the request was held)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def fault_proxy(upstream: str, plan: FaultPlan) -> Iterator[str]:
    """A threaded HTTP proxy in front of `upstream`, applying `plan`; yields its address."""
    handler = type("Handler", (_ProxyHandler,), {"upstream": upstream, "plan": plan})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
