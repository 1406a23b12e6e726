"""A local BigQuery emulator (local-bigquery) in its own process, for the BigQuery offline store's tests.

The emulator lives in its own virtual environment, made by scripts/bigquery-emulator-setup.sh. Its DuckDB
would download extensions at start-up, which fails offline: they are installed from the extension wheels'
files into a HOME of the test session's own, and the emulator runs under that HOME, on 127.0.0.1 and ports
picked by the system, with its data in a temporary folder.
"""

import http.client
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = "scripts/bigquery-emulator-setup.sh"
PROJECT = "fcc-emulator"
START_SECONDS = 60.0
LISTENING = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")
INSTALL_EXTENSIONS = """
import glob, os, sys
import duckdb
site = os.path.dirname(os.path.dirname(duckdb.__file__))
version = "v" + duckdb.__version__
files = glob.glob(os.path.join(site, "duckdb_extension_*", "extensions", version, "*.duckdb_extension"))
if not files:
    sys.exit("no DuckDB extension files in " + site)
connection = duckdb.connect()
for path in sorted(files):
    connection.execute("INSTALL '" + path.replace("'", "''") + "'")
"""


@dataclass(frozen=True)
class Emulator:
    endpoint: str
    project: str
    log: Path


def emulator_venv() -> Path:
    venv = Path(os.environ.get("FCC_EMULATOR_VENV", ".venv-bqemu"))
    return venv if venv.is_absolute() else ROOT / venv


def require_emulator_venv() -> Path:
    """The emulator's venv; skips the test when it is missing, unless FCC_REQUIRE_EMULATOR says it must run."""
    venv = emulator_venv()
    if (venv / "bin" / "local-bigquery").exists():
        return venv
    reason = f"BigQuery emulator not installed at {venv}: run {SETUP}"
    if os.environ.get("FCC_REQUIRE_EMULATOR", "").strip() not in ("", "0"):
        pytest.fail(f"{reason} (FCC_REQUIRE_EMULATOR is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def running_emulator(
    venv: Path, workdir: Path, project: str = PROJECT, *, gcs_local_root: Path | None = None
) -> Iterator[Emulator]:
    """`gcs_local_root`: where the emulator's load jobs find gs://bucket/name (as root/bucket/name), e.g. the
    folder of a Cloud Storage emulator (tests/gcs_emulator.py)."""
    home, data, log = workdir / "home", workdir / "data", workdir / "emulator.log"
    home.mkdir(parents=True, exist_ok=True)
    # A minimal environment: the emulator's settings read any variable named like them (DATA_DIR, ...).
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LC_ALL": "C.UTF-8", "TZ": "UTC"}
    if gcs_local_root is not None:
        env["GCS_LOCAL_ROOT"] = str(gcs_local_root)
    subprocess.run(
        [str(venv / "bin" / "python"), "-c", INSTALL_EXTENSIONS], env=env, check=True, timeout=120, cwd=workdir
    )
    command = [
        str(venv / "bin" / "local-bigquery"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--grpc-port",
        "0",
        "--data-dir",
        str(data),
        "--project",
        project,
    ]
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=output, stderr=subprocess.STDOUT)
    try:
        endpoint = _wait_until_serving(process, log, project)
        yield Emulator(endpoint=endpoint, project=project, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


def _wait_until_serving(process: subprocess.Popen[bytes], log: Path, project: str) -> str:
    deadline = time.monotonic() + START_SECONDS
    endpoint = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the BigQuery emulator exited with {process.returncode}:\n{_tail(log)}")
        if endpoint is None and (match := LISTENING.search(log.read_text(errors="replace"))):
            endpoint = match.group(1)
        if endpoint is not None and _answers(endpoint, f"/bigquery/v2/projects/{project}/datasets"):
            return endpoint
        time.sleep(0.1)
    raise RuntimeError(f"the BigQuery emulator did not start within {START_SECONDS:.0f} s:\n{_tail(log)}")


def _answers(endpoint: str, path: str) -> bool:
    connection = http.client.HTTPConnection(urlsplit(endpoint).netloc, timeout=5)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


if __name__ == "__main__":
    # Runs an emulator by hand: python -m tests.bigquery_emulator /tmp/somewhere
    import tempfile

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="bqemu-"))
    with running_emulator(emulator_venv(), target) as emulator:
        sys.stdout.write(f"{emulator.endpoint} project={emulator.project} log={emulator.log}\n")
        sys.stdout.flush()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
