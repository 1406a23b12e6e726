"""Bounded retries of store calls: a transient error (a locked DuckDB file, a BigQuery 5xx after the client's
own retries, a dropped connection) is tried again with exponential backoff, FCC_STEP_MAX_ATTEMPTS times in all;
anything else fails at once. Used by provisioning steps and backfill jobs, which are idempotent."""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb
from django.conf import settings

from provisioning.errors import PermanentStoreError, StoreError, TransientStoreError

logger = logging.getLogger(__name__)
T = TypeVar("T")


def store_error_classify(error: Exception) -> StoreError:
    if isinstance(error, StoreError):
        return error
    if isinstance(error, duckdb.IOException) and "lock" in str(error).lower():
        return TransientStoreError(f"the DuckDB file is locked by another process: {error}")
    if isinstance(error, TimeoutError | ConnectionError):
        return TransientStoreError(str(error))
    return PermanentStoreError(f"{type(error).__name__}: {error}")


def store_call_with_retries(call: Callable[[], T], on_attempt: Callable[[], None] | None = None) -> T:
    """`call()`'s result; a StoreError when it fails for good (its message says why, and how often it was
    tried when the error was transient)."""
    attempts = int(settings.FCC_STEP_MAX_ATTEMPTS)
    delay = float(settings.FCC_STEP_BACKOFF_SECONDS)
    for attempt in range(1, attempts + 1):
        if on_attempt is not None:
            on_attempt()
        try:
            return call()
        except Exception as raw:
            error = store_error_classify(raw)
            if not error.transient or attempt == attempts:
                if error.transient:
                    raise PermanentStoreError(f"gave up after {attempts} attempts: {error}") from raw
                raise error from raw
            logger.warning("transient store error, retrying", extra={"attempt": attempt, "error": str(error)})
            time.sleep(delay * 2 ** (attempt - 1))
    raise AssertionError("unreachable")
