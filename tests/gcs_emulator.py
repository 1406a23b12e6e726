"""A local Cloud Storage emulator (gcp-storage-emulator) in its own process, for backfills from gs:// sources.

It serves the JSON API over plain HTTP on 127.0.0.1 and keeps each object as a plain file at
`{storage_root}/{bucket}/{object name}`. The product reaches it through pyarrow's GcsFileSystem with
STORAGE_EMULATOR_HOST set (provisioning/parquet_source.py); the BigQuery emulator, which cannot read Cloud Storage
over HTTP without DuckDB's httpfs extension (not installable offline), reads the same objects from that folder
(its GCS_LOCAL_ROOT setting), as BigQuery's load jobs read Cloud Storage themselves.
"""

import http.client
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

START_SECONDS = 30.0


@dataclass(frozen=True)
class GcsEmulator:
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    storage_root: Path  # objects live at storage_root / bucket / name


def require_gcs_emulator() -> None:
    if importlib.util.find_spec("gcp_storage_emulator") is not None:
        return
    reason = "gcp-storage-emulator is not installed (a dev dependency in pyproject.toml)"
    if os.environ.get("FCC_REQUIRE_EMULATOR", "").strip() not in ("", "0"):
        pytest.fail(f"{reason} (FCC_REQUIRE_EMULATOR is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def running_gcs_emulator(workdir: Path, bucket: str = "mr-data") -> Iterator[GcsEmulator]:
    require_gcs_emulator()
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "gcs-emulator.log"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "STORAGE_BASE": str(workdir), "LC_ALL": "C.UTF-8"}
    for attempt in range(3):
        port = _free_port()  # the emulator cannot report a port it picked itself
        command = [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("ab") as output:
            process = subprocess.Popen(
                [*command, "--default-bucket", bucket], env=env, cwd=workdir, stdout=output, stderr=subprocess.STDOUT
            )
        try:
            if _wait(process, port, bucket):
                yield GcsEmulator(f"http://127.0.0.1:{port}", bucket, workdir / ".cloudstorage")
                return
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if attempt == 2:
            raise RuntimeError(f"the Cloud Storage emulator did not start:\n{log.read_text(errors='replace')[-4000:]}")


def _wait(process: subprocess.Popen[bytes], port: int, bucket: str) -> bool:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # e.g. the port was taken meanwhile: the caller tries another
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            connection.request("GET", f"/storage/v1/b/{bucket}")
            if connection.getresponse().status == 200:
                return True
        except OSError:
            pass
        finally:
            connection.close()
        time.sleep(0.1)
    return False
