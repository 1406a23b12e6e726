"""The rules a feature definition must satisfy to be provisioned on BigQuery and Vertex AI Feature Store."""

import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")
NAME_MAX_LENGTH = 128
# Columns of later feature versions are named `<name>__v<N>`; a feature name may not look like one.
VERSION_SUFFIX = re.compile(r"__v[0-9]+$")
TTL_PATTERN = re.compile(r"^([1-9][0-9]{0,5})([mhd])$")
TTL_UNITS = {"m": 60, "h": 3600, "d": 86400}
TTL_MIN_SECONDS = 60
TTL_MAX_SECONDS = 365 * 86400

# BigQuery: at most 10,000 columns per table, and per query result (the training_dataset view).
BIGQUERY_MAX_COLUMNS = 10_000

# GoogleSQL reserved keywords (BigQuery "Lexical structure and syntax", reserved keywords).
BIGQUERY_RESERVED_WORDS = frozenset(
    """
    all and any array as asc assert_rows_modified at between by case cast collate contains create cross cube
    current default define desc distinct else end enum escape except exclude exists extract false fetch
    following for from full group grouping groups hash having if ignore in inner intersect interval into is
    join lateral left like limit lookup merge natural new no not null nulls of on or order outer over
    partition preceding proto qualify range recursive respect right rollup rows select set some struct
    tablesample then to treat true unbounded union unnest using when where window with within
    """.split()  # noqa: SIM905 - a list of 95 words reads better as text
)
# Column-name prefixes BigQuery reserves (case-insensitive).
BIGQUERY_RESERVED_PREFIXES = (
    "_table_",
    "_file_",
    "_partition",
    "_row_timestamp",
    "__root__",
    "_colidentifier",
    "_change_sequence_number",
    "_change_type",
    "_change_timestamp",
)
# Names the offline tables, the training dataset and the online view use for themselves.
RESERVED_COLUMN_NAMES = frozenset({"entity_id", "event_timestamp", "feature_timestamp"})


@dataclass(frozen=True)
class DType:
    name: str
    bigquery: str
    vertex: str
    # Bytes a value takes in BigQuery logical storage (strings: an average), for cost estimates.
    bytes_per_value: int


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("bool", "BOOL", "BOOL", 1),
        DType("int64", "INT64", "INT64", 8),
        DType("numeric", "NUMERIC", "DOUBLE", 16),
        DType("float64", "FLOAT64", "DOUBLE", 8),
        DType("string", "STRING", "STRING", 18),
    )
}
# Type changes BigQuery makes in place with ALTER COLUMN SET DATA TYPE; every other change is breaking.
WIDENINGS = frozenset({("int64", "numeric"), ("int64", "float64"), ("numeric", "float64")})


def ttl_parse(text: str) -> int | None:
    """`48h` -> 172800. None when the text is not a TTL."""
    match = TTL_PATTERN.match(text)
    if not match:
        return None
    return int(match.group(1)) * TTL_UNITS[match.group(2)]


def ttl_format(seconds: int) -> str:
    """172800 -> `48h`, 2592000 -> `30d`: days from three days up, as people write TTLs."""
    if seconds % 86400 == 0 and seconds >= 3 * 86400:
        return f"{seconds // 86400}d"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise ValueError(f"TTL of {seconds} s is not a whole number of minutes")


def column_name(name: str, version: int) -> str:
    return name if version == 1 else f"{name}__v{version}"
