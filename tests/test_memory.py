"""glibc's mmap threshold in the processes that build large tables (provisioning/memory.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from provisioning.memory import _glibc

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only")

# In a fresh process: a 4 MiB block is allocated and freed (glibc's dynamic threshold rises to it), then a 2 MiB
# one is allocated. Prints what allocator_configure returned and whether the 2 MiB block got a mapping of its
# own (mallinfo2's hblkhd: bytes in mmap'd blocks).
_PROBE = """
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
from provisioning.memory import allocator_configure

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

configured = allocator_configure() if sys.argv[2] == "configure" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Mallinfo2
libc.free(libc.malloc(4 << 20))
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"configured": configured, "mapped": mapped}))
"""


def _probe(mode: str, **environment: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FCC_MALLOC", "MALLOC_"))} | environment
    output = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT), mode], capture_output=True, text=True, check=True, env=env
    ).stdout
    return dict(json.loads(output))


def test_large_blocks_keep_mappings_of_their_own_once_configured() -> None:
    # Without the setting, glibc's threshold rose to 4 MiB when that block was freed: 2 MiB comes from the heap,
    # which keeps it when freed.
    assert _probe("leave") == {"configured": None, "mapped": 0}
    configured = _probe("configure")
    assert configured["configured"] == 1 << 20
    assert configured["mapped"] >= 2 << 20


def test_the_threshold_is_a_setting_and_glibc_own_variable_wins() -> None:
    assert _probe("configure", FCC_MALLOC_MMAP_THRESHOLD="0") == {"configured": None, "mapped": 0}
    # Above the block: the heap serves it.
    assert _probe("configure", FCC_MALLOC_MMAP_THRESHOLD=str(3 << 20)) == {"configured": 3 << 20, "mapped": 0}
    # glibc read its own variable at start (a fixed threshold of 8 MiB); allocator_configure leaves it.
    assert _probe("configure", MALLOC_MMAP_THRESHOLD_=str(8 << 20)) == {"configured": None, "mapped": 0}


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        *(
            ("FCC_MALLOC_MMAP_THRESHOLD", v, f"a whole number of bytes from 0 to {32 << 20}")
            for v in ["abc", "-1", str((32 << 20) + 1), "1.5"]
        ),
        *(
            ("FCC_RETRIEVAL_MEMORY_MIB", v, "a whole number of MiB from 0 to 1048576")
            for v in ["-1", "1.5", "lots", "1048577"]
        ),
        *(("FCC_RETRIEVAL_READERS", v, "a whole number from 1 to 16") for v in ["0", "17", "two"]),
    ],
)
def test_a_bad_memory_setting_stops_start_up_naming_the_variable(variable: str, value: str, rule: str) -> None:
    environment = {k: v for k, v in os.environ.items() if k != variable}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment | {variable: value, "DJANGO_SETTINGS_MODULE": "config.settings"},
    )
    assert result.returncode != 0
    assert f"{variable} must be {rule}, not '{value}'" in result.stderr


def test_workers_configure_the_allocator_at_start() -> None:
    from celery.signals import worker_init, worker_process_init

    from config.celery import _configure_allocator

    for signal in (worker_init, worker_process_init):
        assert any(receiver() is _configure_allocator for _, receiver in signal.receivers)
