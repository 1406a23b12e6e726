"""DDL for the offline store, generated from the catalog, never hand-written.

The BigQuery form is the source; the DuckDB form is transpiled from it with sqlglot, so both stores get the
same tables, columns and view. Identifiers are validated by catalog.rules and always quoted; descriptions
are string literals escaped here.
"""

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

KEY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("symbol", "STRING", "Index symbol (NIFTY, BANKNIFTY, ...)."),
    ("ts_minute", "TIMESTAMP", "Start of the minute the row describes (UTC)."),
    ("dte", "INT64", "Days to the expiry of the option chain."),
)
KEY_NAMES = tuple(name for name, _, _ in KEY_COLUMNS)
PARTITION_COLUMN = "ts_minute"
CLUSTER_COLUMNS = ("symbol", "dte")
VIEW_NAME = "training_dataset"


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # BigQuery type
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class TableSpec:
    """What one component table must look like."""

    name: str
    columns: tuple[Column, ...]
    description: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    partition_column: str = PARTITION_COLUMN
    cluster_by: tuple[str, ...] = CLUSTER_COLUMNS
    require_partition_filter: bool = True
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def feature_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.name not in KEY_NAMES)


IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,299}", re.ASCII)
PROJECT_ID = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]", re.ASCII)


def ident(name: str) -> str:
    """A backtick-quoted BigQuery identifier; refuses anything that is not a plain ASCII name."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a valid identifier")
    return f"`{name}`"


def literal(text: str) -> str:
    """A BigQuery string literal."""
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r").replace("\x00", "")
    )
    return f'"{escaped}"'


def label_value(text: str) -> str:
    """BigQuery label values: lowercase letters, digits, _ and -, at most 63 characters."""
    cleaned = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "_-") else "_" for ch in text.lower())
    return cleaned[:63]


def qualified(project: str, dataset: str, table: str) -> str:
    if not PROJECT_ID.fullmatch(project):
        raise ValueError(f"{project[:80]!r} is not a valid Google Cloud project id")
    ident(dataset)
    ident(table)
    return f"`{project}.{dataset}.{table}`"


def create_dataset_sql(project: str, dataset: str, region: str, environment: str) -> str:
    qualified(project, dataset, "_")
    return (
        f"CREATE SCHEMA IF NOT EXISTS `{project}.{dataset}` OPTIONS(location={literal(region)}, "
        f'labels=[("environment", {literal(label_value(environment))})])'
    )


def create_table_sql(project: str, dataset: str, table: TableSpec) -> str:
    lines = []
    for column in table.columns:
        not_null = " NOT NULL" if column.required else ""
        described = f" OPTIONS(description={literal(column.description)})" if column.description else ""
        lines.append(f"  {ident(column.name)} {column.type}{not_null}{described}")
    labels = ", ".join(f"({literal(k)}, {literal(label_value(v))})" for k, v in table.labels)
    options = [f"require_partition_filter={'TRUE' if table.require_partition_filter else 'FALSE'}"]
    if table.description:
        options.append(f"description={literal(table.description)}")
    if labels:
        options.append(f"labels=[{labels}]")
    return (
        f"CREATE TABLE IF NOT EXISTS {qualified(project, dataset, table.name)} (\n"
        + ",\n".join(lines)
        + f"\n)\nPARTITION BY DATE({ident(table.partition_column)})\n"
        + f"CLUSTER BY {', '.join(ident(c) for c in table.cluster_by)}\n"
        + f"OPTIONS({', '.join(options)})"
    )


def add_columns_sql(project: str, dataset: str, table: str, columns: Sequence[Column]) -> str:
    adds = ", ".join(f"ADD COLUMN IF NOT EXISTS {ident(c.name)} {c.type}" for c in columns)
    return f"ALTER TABLE {qualified(project, dataset, table)} {adds}"


def widen_column_sql(project: str, dataset: str, table: str, column: str, new_type: str) -> str:
    return f"ALTER TABLE {qualified(project, dataset, table)} ALTER COLUMN {ident(column)} SET DATA TYPE {new_type}"


def set_table_options_sql(project: str, dataset: str, table: TableSpec) -> str:
    """The table's description, labels and partition-filter requirement, set in place (BigQuery replaces the
    whole label set). Partitioning and clustering cannot change in place: drift detection reports them."""
    labels = ", ".join(f"({literal(k)}, {literal(label_value(v))})" for k, v in table.labels)
    description = literal(table.description) if table.description else "NULL"
    return (
        f"ALTER TABLE {qualified(project, dataset, table.name)} SET OPTIONS("
        f"require_partition_filter={'TRUE' if table.require_partition_filter else 'FALSE'}, "
        f"description={description}, labels=[{labels}])"
    )


def set_column_description_sql(project: str, dataset: str, table: str, column: str, description: str) -> str:
    text = literal(description) if description else "NULL"
    return (
        f"ALTER TABLE {qualified(project, dataset, table)} ALTER COLUMN {ident(column)} SET OPTIONS(description={text})"
    )


def training_view_sql(project: str, dataset: str, selections: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    """All components joined on the entity key: one row per (symbol, ts_minute, dte) seen in any table.

    `selections`: (table, [(column, feature name)]) — the current column of each active feature, exposed
    under the feature's name.
    """
    selections = [(t, cols) for t, cols in selections if cols]
    if not selections:
        raise ValueError("the training_dataset view needs at least one component table with features")
    keys = ", ".join(ident(k) for k in KEY_NAMES)
    select = [f"k.{ident(k)}" for k in KEY_NAMES]
    joins = []
    # Identifiers are validated and quoted by ident() and qualified(); nothing here comes from a request.
    union = " UNION DISTINCT ".join(f"SELECT {keys} FROM {qualified(project, dataset, t)}" for t, _ in selections)  # noqa: S608
    for table, columns in selections:
        alias = table.removesuffix("_features")
        for column, name in columns:
            select.append(f"{alias}.{ident(column)}" + (f" AS {ident(name)}" if name != column else ""))
        joins.append(f"LEFT JOIN {qualified(project, dataset, table)} AS {alias} USING ({keys})")
    return (
        f"CREATE OR REPLACE VIEW {qualified(project, dataset, VIEW_NAME)} AS\n"
        f"SELECT {', '.join(select)}\nFROM ({union}) AS k\n" + "\n".join(joins)
    )


def _duckdb_tree(tree: exp.Expr) -> exp.Expr:
    # DuckDB has no project level: `project.dataset.table` becomes schema `dataset`, table `table`.
    for table in tree.find_all(exp.Table):
        if table.args.get("catalog") is not None:
            table.set("catalog", None)
    # FORMAT_TIMESTAMP(format, ts, zone): sqlglot drops the zone for DuckDB; DuckDB formats `ts AT TIME ZONE zone`.
    for node in list(tree.find_all(exp.TimeToStr)):
        zone = node.args.get("zone")
        if zone is not None:
            instant = node.this.this if isinstance(node.this, exp.TsOrDsToTimestamp) else node.this
            local = exp.AtTimeZone(this=instant.copy(), zone=zone.copy())
            node.replace(exp.func("STRFTIME", local, node.args["format"].copy()))
    # BigQuery NUMERIC is DECIMAL(38, 9); DuckDB's bare DECIMAL is (18, 3).
    for dtype in tree.find_all(exp.DataType):
        if dtype.this == exp.DataType.Type.DECIMAL and not dtype.expressions:
            dtype.replace(exp.DataType.build("DECIMAL(38, 9)", dialect="duckdb"))
    return tree


# The online source view of a component (what a Vertex AI feature group reads).
ENTITY_ID_COLUMN = "entity_id"
TIMESTAMP_COLUMN = "feature_timestamp"
SOURCE_SUFFIX = "_features_online"


def online_source_view_sql(
    project: str, dataset: str, component: str, columns: Sequence[tuple[str, str]], window_seconds: int
) -> str:
    """The BigQuery view a component's FeatureGroup reads: the catalog's entity id, the feature timestamp and
    the component's features under their names (one Vertex AI Feature each), for the rows younger than
    `window_seconds` (the longest TTL of its online features: what a feature view sync reads).

    `columns`: (current table column, feature name) for the component's features. The offline store creates it
    (replace_view) before update() registers the group: Vertex checks the source when features are created.
    """
    if not columns:
        raise ValueError(f"{component} has no features: it needs no source view")
    if window_seconds <= 0:
        raise ValueError("the online window must be positive")
    table = qualified(project, dataset, f"{component}_features")
    view = qualified(project, dataset, f"{component}{SOURCE_SUFFIX}")
    symbol, ts_minute, dte = (ident(k) for k in KEY_NAMES)
    selected = ", ".join(f"{ident(column)} AS {ident(name)}" for column, name in columns)
    # Identifiers are validated and quoted by ident() and qualified(); nothing here comes from a request.
    return (
        f"CREATE OR REPLACE VIEW {view} AS\n"
        f"SELECT CONCAT({symbol}, '_', FORMAT_TIMESTAMP('%Y%m%d%H%M', {ts_minute}, 'Asia/Kolkata'), '_', "
        f"CAST({dte} AS STRING)) AS {ident(ENTITY_ID_COLUMN)}, {ts_minute} AS {ident(TIMESTAMP_COLUMN)}, {selected}\n"
        f"FROM {table}\n"
        f"WHERE {ts_minute} >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL {int(window_seconds)} SECOND)"
    )


@functools.lru_cache(maxsize=512)
def _to_duckdb_cached(sql: str) -> tuple[str, ...]:
    return tuple(_to_duckdb(sql))


def to_duckdb(sql: str) -> list[str]:
    """The DuckDB statements for one BigQuery statement (DuckDB takes one ADD COLUMN per ALTER TABLE).

    Parsing a 220-column CREATE TABLE takes sqlglot a fraction of a second, and a run's preflight and its steps
    send the same statements: results are memoised.
    """
    return list(_to_duckdb_cached(sql))


# A column's OPTIONS(description="...") as literal() writes it; DuckDB has no column options, so they are
# dropped before parsing (which they would otherwise dominate: 932 descriptions in the catalog).
COLUMN_DESCRIPTION = re.compile(r' OPTIONS\(description="(?:[^"\\]|\\.)*"\)')


def _to_duckdb(sql: str) -> list[str]:
    sql = COLUMN_DESCRIPTION.sub("", sql)
    tree = _duckdb_tree(sqlglot.parse_one(sql, read="bigquery"))
    if isinstance(tree, exp.Alter) and len(tree.args.get("actions") or []) > 1:
        statements = []
        for action in tree.args["actions"]:
            single = tree.copy()
            single.set("actions", [action.copy()])
            statements.append(single.sql(dialect="duckdb"))
        return statements
    if isinstance(tree, exp.Create) and tree.kind == "SCHEMA":
        # `project.dataset` -> the dataset is DuckDB's schema.
        dataset = tree.this.sql(dialect="bigquery").strip("`").split(".")[-1]
        return [f'CREATE SCHEMA IF NOT EXISTS "{dataset}"']
    if isinstance(tree, exp.Create):
        # Partitioning, clustering, labels and descriptions have no DuckDB DDL; the DuckDB store records them
        # in its metadata (provisioning/offline/duckdb_store.py) so they are described like BigQuery's.
        tree.set("properties", None)
        for constraint in list(tree.find_all(exp.ColumnConstraint)):
            if isinstance(constraint.args.get("kind"), exp.Properties):
                constraint.pop()
    return [tree.sql(dialect="duckdb")]
