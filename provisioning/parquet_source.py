"""Parquet sources in the story's layout: `{root}/{ASSET}/{yyyy}/{mm}/{dd}/{HH}/{component}.parquet`."""

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.errors import Problem

DAY_PATH = re.compile(
    r"(?P<asset>[A-Z0-9_]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/(?P<component>[a-z0-9_]+)\.parquet$"
)


@dataclass(frozen=True)
class SourceFile:
    path: str
    asset: str
    day: dt.date
    component: str


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


def source_files(root: str, components: set[str], start: dt.date | None, end: dt.date | None) -> list[SourceFile]:
    """The files of a local source root for these components and dates (inclusive), in date order."""
    if root.startswith("gs://"):
        raise ValueError(
            "gs:// sources are loaded by the BigQuery backend's load jobs; the embedded DuckDB store reads local paths"
        )
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"source {root!r} is not a directory")
    found = []
    for path in base.glob("*/*/*/*/*/*.parquet"):
        match = DAY_PATH.search(path.as_posix())
        if not match or match["component"] not in components:
            continue
        day = dt.date(int(match["y"]), int(match["m"]), int(match["d"]))
        if (start and day < start) or (end and day > end):
            continue
        found.append(SourceFile(str(path), match["asset"], day, match["component"]))
    return sorted(found, key=lambda f: (f.day, f.component, f.path))


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
        have = {field.name: arrow_to_bigquery(field.type) for field in pq.read_schema(file.path)}
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
