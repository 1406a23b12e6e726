"""Parquet sources in the story's layout: `{root}/{ASSET}/{yyyy}/{mm}/{dd}/{HH}/{component}.parquet`, under a
local directory or a `gs://bucket/prefix` URI.

Cloud Storage is read with pyarrow's own GcsFileSystem (no further dependency): listed and its Parquet footers
read here to check the files against the catalog before anything is written; the BigQuery backend then loads the
`gs://` URIs with load jobs, which read Cloud Storage themselves. Credentials are Google's default ones (the
service account needs roles/storage.objectViewer). `STORAGE_EMULATOR_HOST` (`host:port` or `http://host:port`,
the variable Google's own clients honour) points it at a local emulator instead, anonymously.
"""

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from catalog.errors import Problem

DAY_PATH = re.compile(
    r"(?P<asset>[A-Z0-9_]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/(?P<component>[a-z0-9_]+)\.parquet$"
)


@dataclass(frozen=True)
class SourceFile:
    path: str  # a local path or a gs:// URI
    asset: str
    day: dt.date
    component: str
    size: int = 0  # bytes


GCS_PREFIX = "gs://"
GCS_RETRY_SECONDS = 15.0


def gcs_filesystem() -> pafs.FileSystem:
    """Cloud Storage with the default Google credentials, or the emulator STORAGE_EMULATOR_HOST names."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip()
    retry = dt.timedelta(seconds=GCS_RETRY_SECONDS)
    if host:
        parts = urlsplit(host if "://" in host else f"http://{host}")
        return pafs.GcsFileSystem(
            anonymous=True, scheme=parts.scheme, endpoint_override=parts.netloc, retry_time_limit=retry
        )
    return pafs.GcsFileSystem(retry_time_limit=retry)


def _filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    if path.startswith(GCS_PREFIX):
        return gcs_filesystem(), path.removeprefix(GCS_PREFIX)
    return pafs.LocalFileSystem(), path


def read_schema(path: str) -> pa.Schema:
    """The Parquet schema of a local file or a gs:// object (only its footer is read)."""
    filesystem, inner = _filesystem(path)
    try:
        return pq.read_schema(inner, filesystem=filesystem)
    except OSError as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"cannot read {path}: {error}") from error


def arrow_to_bigquery(dtype: pa.DataType) -> str:
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return "STRING"
    if pa.types.is_integer(dtype):
        return "INT64"
    if pa.types.is_floating(dtype):
        return "FLOAT64"
    if pa.types.is_boolean(dtype):
        return "BOOL"
    if pa.types.is_timestamp(dtype):
        return "TIMESTAMP"
    if pa.types.is_decimal(dtype):
        return "NUMERIC"
    if pa.types.is_date(dtype):
        return "DATE"
    return str(dtype).upper()


def source_files(
    root: str, components: set[str], start: dt.date | None, end: dt.date | None, *, gcs: bool = False
) -> list[SourceFile]:
    """The files of a source root (a local directory, or a gs:// URI when `gcs`) for these components and dates
    (inclusive), in date order."""
    if root.startswith(GCS_PREFIX):
        if not gcs:
            raise ValueError(
                "gs:// sources are loaded by the BigQuery backend's load jobs; the embedded DuckDB store reads "
                "local paths"
            )
        return _matching(_gcs_listing(root), components, start, end)
    base = Path(root)
    try:
        is_dir = base.is_dir()
    except OSError as error:  # a name too long for the file system, a directory it may not read, ...
        raise FileNotFoundError(f"source {root[:200]!r} cannot be read: {error.strerror}") from None
    if not is_dir:
        raise FileNotFoundError(f"source {root[:200]!r} is not a directory")
    listed = [
        (path.relative_to(base).as_posix(), str(path), path.stat().st_size) for path in base.glob("*/*/*/*/*/*.parquet")
    ]
    return _matching(listed, components, start, end)


def _matching(
    listed: list[tuple[str, str, int]], components: set[str], start: dt.date | None, end: dt.date | None
) -> list[SourceFile]:
    """The listed files ((path relative to the root, path, size)) in the layout, for these components and dates."""
    found = []
    for relative, path, size in listed:
        match = DAY_PATH.fullmatch(relative)
        if not match or match["component"] not in components:
            continue
        day = dt.date(int(match["y"]), int(match["m"]), int(match["d"]))
        if (start and day < start) or (end and day > end):
            continue
        found.append(SourceFile(path, match["asset"], day, match["component"], size))
    return sorted(found, key=lambda f: (f.day, f.component, f.path))


def _gcs_listing(root: str) -> list[tuple[str, str, int]]:
    """(path relative to the root, gs:// URI, size) of every object under a gs://bucket/prefix."""
    prefix = root.removeprefix(GCS_PREFIX).strip("/")
    if not prefix:
        raise ValueError(f"source {root!r} names no bucket")
    try:
        infos = gcs_filesystem().get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    except OSError as error:
        raise ValueError(f"cannot list {root}: {error}") from error
    listed = [
        (info.path[len(prefix) :].lstrip("/"), f"{GCS_PREFIX}{info.path}", int(info.size or 0))
        for info in infos
        if info.type == pafs.FileType.File
    ]
    if not listed:
        raise FileNotFoundError(f"source {root!r} holds no objects")
    return listed


@dataclass(frozen=True)
class ExpectedColumn:
    type: str  # BigQuery type
    required: bool  # deprecated features may be absent from newer files
    target: str  # the table column it loads into


def schema_problems(files: list[SourceFile], expected: Mapping[str, Mapping[str, ExpectedColumn]]) -> list[Problem]:
    """Every file's columns against the catalog: missing, unknown and mistyped columns, listed together, once per
    component and column, naming the first file where each was seen."""
    problems: dict[tuple[str, str, str], Problem] = {}

    def add(component: str, column: str, rule: str, detail: str) -> None:
        problems.setdefault((component, column, rule), Problem(f"{component}.{column}", rule, detail))

    for file in files:
        want = expected[file.component]
        have = {field.name: arrow_to_bigquery(field.type) for field in read_schema(file.path)}
        for column, spec in want.items():
            if column not in have:
                if spec.required:
                    add(file.component, column, "missing_column", f"{file.path} has no column {column!r} ({spec.type})")
            elif have[column] != spec.type:
                add(
                    file.component,
                    column,
                    "type_mismatch",
                    f"{file.path}: {column!r} is {have[column]}, the catalog says {spec.type}",
                )
        for column in have.keys() - want.keys():
            add(file.component, column, "unknown_column", f"{file.path}: column {column!r} is not in the catalog")
    return list(problems.values())
