"""The C allocator's setting for processes that build large tables (workers, the point-in-time bench).

glibc's malloc serves a request above its mmap threshold with a mapping of its own, returned to the system on
free. The threshold starts at 128 KiB and rises (up to 32 MiB on 64-bit) each time such a block is freed, so
after the first large result most blocks a point-in-time retrieval allocates (DuckDB's vectors, numpy's index
arrays, Arrow's buffers where Arrow uses the system allocator) come from the heap arenas instead, which keep
what is freed for the next request and hand little back. A training job's peak then holds the last call's freed
blocks beside the new result: at 100,000 entity rows of 932 features, ~20-40 MB over an 800 MB target.

Fixing the threshold (which also stops it moving) keeps large blocks in mappings of their own. The value is a
trade: below ~1 MiB the extra mmap/munmap calls (and the page faults of fresh mappings) cost time; above a few
MiB the arenas keep more. `FCC_MALLOC_MMAP_THRESHOLD` sets it in bytes (0: leave glibc's dynamic threshold);
glibc's own `MALLOC_MMAP_THRESHOLD_`, when set, wins, as glibc reads it at start. Nothing is done on a C
library other than glibc.

The point-in-time retrieval's memory settings are read here too (provisioning/retrieval.py uses them), so the
settings module checks them at start without importing Arrow.
"""

import ctypes
import ctypes.util
import functools
import logging
import os

logger = logging.getLogger(__name__)

DEFAULT_MMAP_THRESHOLD = 1 << 20  # bytes
_M_MMAP_THRESHOLD = -3  # malloc.h
_ENVIRONMENT = "FCC_MALLOC_MMAP_THRESHOLD"
_GLIBC_ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_"


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    return libc


def mmap_threshold_wanted() -> int:
    """The threshold asked for: FCC_MALLOC_MMAP_THRESHOLD in bytes, or the default. A value that is not a
    whole number of bytes from 0 to 32 MiB raises ValueError naming the variable."""
    raw = os.environ.get(_ENVIRONMENT, "").strip()
    if not raw:
        return DEFAULT_MMAP_THRESHOLD
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 32 << 20:
        raise ValueError(f"{_ENVIRONMENT} must be a whole number of bytes from 0 to {32 << 20}, not {raw!r}")
    return value


def allocator_configure() -> int | None:
    """Fixes glibc's mmap threshold for this process (and the processes it forks after) as described above.
    Returns the threshold set, or None when nothing was set (not glibc, switched off, or set by glibc's own
    variable). Safe to call more than once."""
    wanted = mmap_threshold_wanted()
    libc = _glibc()
    if libc is None or wanted == 0 or os.environ.get(_GLIBC_ENVIRONMENT):
        return None
    if libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(wanted)) != 1:
        logger.warning("mallopt refused the mmap threshold", extra={"threshold": wanted})
        return None
    return wanted


RETRIEVAL_MEMORY_ENVIRONMENT = "FCC_RETRIEVAL_MEMORY_MIB"
DEFAULT_RETRIEVAL_MEMORY_MIB = 384
RETRIEVAL_READERS_ENVIRONMENT = "FCC_RETRIEVAL_READERS"


def retrieval_memory_budget() -> int:
    """FCC_RETRIEVAL_MEMORY_MIB in bytes, or the default; anything but a whole number of MiB from 0 to 1048576
    raises ValueError naming the variable."""
    raw = os.environ.get(RETRIEVAL_MEMORY_ENVIRONMENT, "").strip() or str(DEFAULT_RETRIEVAL_MEMORY_MIB)
    if not raw.isdigit() or int(raw) > 1 << 20:
        raise ValueError(
            f"{RETRIEVAL_MEMORY_ENVIRONMENT} must be a whole number of MiB from 0 to {1 << 20}, not {raw!r}"
        )
    return int(raw) << 20


def retrieval_readers() -> int | None:
    """FCC_RETRIEVAL_READERS, or None when it is not set; anything but a whole number from 1 to 16 raises
    ValueError naming the variable."""
    raw = os.environ.get(RETRIEVAL_READERS_ENVIRONMENT, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 16:
        raise ValueError(f"{RETRIEVAL_READERS_ENVIRONMENT} must be a whole number from 1 to 16, not {raw!r}")
    return int(raw)
