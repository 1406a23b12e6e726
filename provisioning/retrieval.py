"""Point-in-time training datasets: for each entity row, each feature's latest value at or before the row's
`event_timestamp` for the same symbol and dte, within the feature's TTL, null otherwise.

"Latest value" is the value of the latest row of the feature's component table (a row whose value is null
gives null); "within the TTL" is `event_timestamp - ts_minute <= ttl`, bounds included. The same semantics
run three ways, and tests hold them equal cell for cell:
- `retrieve_point_in_time`: per component, an as-of match on the keys alone (the component's rows sorted
  once by symbol, dte, ts and packed into one int64 key, then one `numpy.searchsorted` for all entity rows),
  then a gather of the feature columns at the matched rows (numpy `take` into one block per width for
  fixed-width columns, `Table.take` for the others) and a validity bitmap per TTL, shared by every feature
  of that TTL, that nulls rows without a match or with a match older than the TTL;
- `training_sql`: the BigQuery query (a join within the TTL and `QUALIFY ROW_NUMBER() ... = 1` per
  component), which runs on DuckDB through `provisioning.ddl.to_duckdb`;
- the reference in the tests: pandas `merge_asof` backward by symbol and dte with the TTL as tolerance.

Sources: the story's Parquet layout (`ParquetLayoutSource`), Parquet files per component
(`ParquetFilesSource`), the DuckDB offline store's tables (`DuckDBSource`), or tables already held in memory
(`ArrowSource`, e.g. `ArrowSource.load(...)` once for many retrievals). Sources that read files or a database
hand a component over a batch of columns at a time (`read_batches`), each batch with the keys: the match is made
once and reused while the keys are the same rows, and the result's 8 bytes a cell stay most of the peak memory.
"""

import datetime as dt
import functools
import os
import queue
import re
import threading
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from provisioning import memory
from provisioning.ddl import ident, qualified

ENTITY_COLUMNS = ("symbol", "dte", "event_timestamp")
ROW_COLUMN = "entity_row"
ARROW_TYPES: dict[str, Any] = {
    "float64": pa.float64(),
    "numeric": pa.decimal128(38, 9),
    "int64": pa.int64(),
    "bool": pa.bool_(),
    "string": pa.string(),
}
_NS_PER_SECOND = 1_000_000_000
_LAYOUT_PATH = re.compile(
    r"(?P<asset>[^/]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/(?P<c>[^/]+)\.parquet$"
)

Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


class RetrievalError(ValueError):
    """The entity rows or the feature selection cannot be used; the message says why."""


@dataclass(frozen=True)
class FeatureRef:
    """One selected feature: where its values live and how long they stay valid."""

    name: str  # the output column
    component: str
    column: str  # the offline table column (`name` for version 1, `name__v2` after a breaking change)
    ttl_seconds: int
    dtype: str = "float64"  # catalog dtype: the output type when the source has no data for it

    @property
    def table(self) -> str:
        return f"{self.component}_features"


def feature_refs_from_specs(
    documents: Iterable[Mapping[str, Any]], names: Collection[str] | None = None
) -> list[FeatureRef]:
    """The features of spec documents (`catalog.specs.load_spec_files`), all or those named, in spec order."""
    from catalog import rules

    refs = []
    for document in documents:
        for feature in document["features"]:
            if names is not None and feature["name"] not in names:
                continue
            ttl = rules.ttl_parse(str(feature["ttl"]))
            if ttl is None:
                raise RetrievalError(f"{feature['name']}: bad ttl {feature['ttl']!r}")
            refs.append(FeatureRef(feature["name"], document["component"], feature["name"], ttl, str(feature["dtype"])))
    return refs


def feature_refs_from_catalog(
    environment: Any, names: Collection[str] | None = None, components: Collection[str] | None = None
) -> list[FeatureRef]:
    """The active features of an environment (`catalog.models.Environment`): all, or those named, or those of
    the components named; each read from its current version's column."""
    from catalog.models import Feature

    features = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE).select_related("component")
    if names is not None:
        features = features.filter(name__in=list(names))
    if components is not None:
        features = features.filter(component__key__in=list(components))
    return [
        FeatureRef(f.name, f.component.key, f.column_name, f.ttl_seconds, f.dtype)
        for f in features.order_by("component__key", "id")
    ]


# --- sources -------------------------------------------------------------------------------------------------


class FeatureSource(Protocol):
    def read(
        self, component: str, columns: Sequence[str], *, symbols: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> Any:
        """A pyarrow Table with `symbol`, `dte`, `ts_minute` and `columns` holding at least the component's rows
        of these symbols with `start <= ts_minute <= end` (more rows are harmless), or None without data.
        A column missing from the data may be missing from the table."""


@runtime_checkable
class BatchedFeatureSource(FeatureSource, Protocol):
    def read_batches(
        self, component: str, columns: Sequence[str], *, symbols: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> Iterator[Any]:
        """What `read` returns, split by columns into several tables, each with the keys: only a batch of columns
        is held at a time. Nothing without data."""


# Columns read at a time from files or a database: decoding a whole component at once holds 2 to 3 times its
# size on top of the result (103 MB for the bench's widest over 5 days, 38 MB), which grows with the window;
# a batch bounds it whatever the window, at no measurable cost over 5 days.
COLUMNS_PER_READ = 64
# Columns read at a time from the DuckDB store by a call whose result leaves less of the memory budget than a reader's
# batch takes (memory_plan): the batch and the blocks its scan holds shrink with it (the bench's 100,000 rows: 776-784
# MB peak instead of 797-805 MB, 737 MB of it the result). Partition files are not read narrower: each batch decodes the
# files' keys again (16 columns: 813-832 MB instead of 770-782 MB).
LEAN_COLUMNS_PER_READ = 16
# The memory a point-in-time call may take (FCC_RETRIEVAL_MEMORY_MIB) for its result and, when the result leaves room,
# for reading faster: first a second reader (FCC_RETRIEVAL_READERS, when not set), then the DuckDB store's blocks kept
# from one call to the next on the same connection (a training job's batches read the same blocks). A call whose result
# takes the budget reads as it would at 0: one reader, every block dropped after each component, LEAN_COLUMNS_PER_READ
# columns at a time. A DuckDB scan of a table of one row group, or a Parquet file's decode, runs on one core, so on two
# cores a second reader (a batch and its scan: 30-65 MB) cuts the DuckDB store's 10,000-row call of the bench from
# 0.66-0.68 s to 0.47-0.53 s; its 150 MB of blocks kept too, 0.39-0.44 s from the second call on, 330-350 MB peak
# (before: 178). 100,000 rows (737 MB of result): 778-785 MB.
DEFAULT_MEMORY_MIB = memory.DEFAULT_RETRIEVAL_MEMORY_MIB
# What a reader holds besides the others' (a batch of COLUMNS_PER_READ columns and DuckDB's scan of it).
_READER_BYTES = 64 * 2**20
# Bytes a value of a result column takes, by catalog dtype (strings: an offset and a short text), besides its
# validity bit.
_VALUE_BYTES = {"float64": 8, "int64": 8, "numeric": 16, "bool": 0, "string": 20}


def _setting(read: Callable[[], Any]) -> Any:
    """A setting read by provisioning/memory.py; a bad value raises RetrievalError naming the variable."""
    try:
        return read()
    except ValueError as error:
        raise RetrievalError(str(error)) from None


def memory_budget() -> int:
    """FCC_RETRIEVAL_MEMORY_MIB in bytes, or the default."""
    return int(_setting(memory.retrieval_memory_budget))


def result_bytes(rows: int, features: Sequence[FeatureRef]) -> int:
    """About what retrieve_point_in_time's feature columns take for `rows` entity rows."""
    bits = sum(8 * _VALUE_BYTES.get(ref.dtype, 8) + 1 + (ref.dtype == "bool") for ref in features)
    return rows * bits // 8


@dataclass(frozen=True)
class MemoryPlan:
    """How a call for a number of entity rows reads within the memory budget: `readers` components at once,
    `keep_bytes` of the DuckDB store's blocks kept (DuckDBSource.keep_bytes), and `columns_per_read` columns
    of it at a time (DuckDBSource.columns_per_read)."""

    readers: int
    keep_bytes: int
    columns_per_read: int = COLUMNS_PER_READ


def memory_plan(rows: int, features: Sequence[FeatureRef], *, budget: int | None = None) -> MemoryPlan:
    """The plan for a call for `rows` entity rows within `budget` bytes (FCC_RETRIEVAL_MEMORY_MIB unless
    given). FCC_RETRIEVAL_READERS, when set, fixes the readers whatever the budget."""
    left = (memory_budget() if budget is None else budget) - result_bytes(rows, features)
    readers: int | None = _setting(memory.retrieval_readers)
    if readers is None:
        readers = 2 if (os.cpu_count() or 1) > 1 and left >= _READER_BYTES else 1
    per_read = COLUMNS_PER_READ if left >= _READER_BYTES else LEAN_COLUMNS_PER_READ
    return MemoryPlan(readers, max(0, left - (readers - 1) * _READER_BYTES), per_read)


def _column_batches(columns: Iterable[str], per_read: int) -> list[list[str]]:
    """The distinct columns in batches; one empty batch without columns (the keys are still read)."""
    distinct = list(dict.fromkeys(columns))
    size = max(1, per_read or len(distinct))
    return [distinct[i : i + size] for i in range(0, len(distinct), size)] or [[]]


def _key_fields() -> list[Any]:
    return [
        pa.field("symbol", pa.string()),
        pa.field("ts_minute", pa.timestamp("us", tz="UTC")),
        pa.field("dte", pa.int64()),
    ]


# Above this many files DuckDB's reader is used: its per-file overhead is several times lower than pyarrow's
# for the layout's small, wide hour files; below it pyarrow reads the larger files faster.
DUCKDB_READ_MIN_FILES = 32


def _read_parquet_batches(files: Sequence[str], columns: Sequence[str], threads: int, per_read: int) -> Iterator[Any]:
    """The files' keys and columns, `per_read` columns a table (0: one table); columns absent from a file are
    null there, columns absent from every file are left out."""
    if not files:
        return
    if len(files) >= DUCKDB_READ_MIN_FILES:
        yield from _read_parquet_batches_duckdb(files, columns, threads, per_read)
        return
    readers = [pq.ParquetFile(f) for f in files]
    try:
        schemas = [r.schema_arrow for r in readers]  # a property that converts the file's schema on every call
        union = pa.unify_schemas(schemas)
        fields = _key_fields()
        for column in dict.fromkeys(columns):
            index = union.get_field_index(column)
            if index >= 0:
                fields.append(union.field(index))
        keys = fields[: len(_key_fields())]
        types = {f.name: f.type for f in fields}
        # The files holding every column of the same type (normally all): their tables are taken as they are read.
        whole = []
        for file_schema in schemas:
            file_types = dict(zip(file_schema.names, file_schema.types, strict=True))
            whole.append(all(file_types.get(name) == kind for name, kind in types.items()))
        # Each file is opened and its footer read once for every batch.
        for batch in _column_batches([f.name for f in fields[len(keys) :]], per_read):
            wanted = set(batch)
            schema = pa.schema([*keys, *(f for f in fields if f.name in wanted)])
            parts = []
            for reader, file_schema, complete in zip(readers, schemas, whole, strict=True):
                if complete:
                    part = reader.read(columns=schema.names, use_threads=threads > 1)
                    # The same columns and types; nullability and metadata as the union's.
                    parts.append(pa.Table.from_arrays(part.select(schema.names).columns, schema=schema))
                    continue
                names = set(file_schema.names)
                part = reader.read(columns=[n for n in schema.names if n in names], use_threads=threads > 1)
                # A file of an older catalog version lacks a column (null there) or has another type.
                parts.append(
                    pa.table(
                        [
                            part[f.name].cast(f.type) if f.name in names else pa.nulls(part.num_rows, f.type)
                            for f in schema
                        ],
                        schema=schema,
                    )
                )
            yield pa.concat_tables(parts)
            del parts
    finally:
        for reader in readers:
            reader.close()


def _read_parquet_batches_duckdb(
    files: Sequence[str], columns: Sequence[str], threads: int, per_read: int
) -> Iterator[Any]:
    import duckdb

    connection = duckdb.connect(config={"threads": max(1, threads)})
    params = {"files": list(files)}

    def select(batch: Sequence[str], relation: str) -> str:
        wanted = ", ".join(f'"{_checked(c)}"' for c in ["symbol", "ts_minute", "dte", *batch])
        return f"SELECT {wanted} FROM {relation}"  # noqa: S608

    try:
        connection.execute("SET TimeZone = 'UTC'")
        # Every batch reads the same files: their footers are parsed once.
        connection.execute("SET parquet_metadata_cache = true")
        relation = "read_parquet($files)"
        # The files of one component normally share a schema: the newest file's columns are read.
        present = set(pq.read_schema(files[-1]).names)
        pending = _column_batches((c for c in columns if c in present), per_read)
        done: set[str] = set()
        while pending:
            batch = pending.pop(0)
            try:
                table = connection.sql(select(batch, relation), params=params).to_arrow_table()
            except duckdb.Error:
                if "union_by_name" in relation:
                    raise
                # Files of different catalog versions: match columns by name, nulls where a file lacks one.
                relation = "read_parquet($files, union_by_name = true)"
                described = connection.sql(f"DESCRIBE SELECT * FROM {relation}", params=params).fetchall()  # noqa: S608
                present = {row[0] for row in described}
                remaining = [c for c in dict.fromkeys(columns) if c in present and c not in done]
                pending = _column_batches(remaining, per_read) if remaining or not done else []
                continue
            done.update(batch)
            yield table
            del table
    finally:
        connection.close()


class _ReadsInBatches:
    """`read` and `read_batches` of a source that reads `per_read` columns at a time in `_batches` (0: all)."""

    columns_per_read: int

    def read(
        self, component: str, columns: Sequence[str], *, symbols: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> Any:
        return next(self._batches(component, columns, symbols, start, end, per_read=0), None)

    def read_batches(
        self, component: str, columns: Sequence[str], *, symbols: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> Iterator[Any]:
        return self._batches(component, columns, symbols, start, end, per_read=self.columns_per_read)

    def _batches(
        self,
        component: str,
        columns: Sequence[str],
        symbols: Collection[str],
        start: dt.datetime,
        end: dt.datetime,
        per_read: int,
    ) -> Iterator[Any]:
        raise NotImplementedError


@dataclass
class ParquetLayoutSource(_ReadsInBatches):
    """Parquet in the story's layout: `{root}/{ASSET}/{yyyy}/{mm}/{dd}/{HH}/{component}.parquet`.

    Reads only the files of the entity rows' symbols and of the dates that can hold values for them (the path
    date is the exchange's, so the window is widened by a day on each side).
    """

    root: Path
    threads: int = 4
    # All at once by default: each batch would open every one of the many small files again, which costs more
    # than the memory it saves.
    columns_per_read: int = 0

    def files(self, component: str, symbols: Collection[str], start: dt.date, end: dt.date) -> list[str]:
        """The component's files of these assets and dates (inclusive), oldest first."""
        found = []
        for asset in sorted(symbols):
            base = self.root / asset
            if not base.is_dir():
                continue
            for path in base.glob(f"*/*/*/*/{component}.parquet"):
                match = _LAYOUT_PATH.search(path.as_posix())
                if not match:
                    continue
                day = dt.date(int(match["y"]), int(match["m"]), int(match["d"]))
                if start <= day <= end:
                    found.append((day, match["h"], asset, str(path)))
        return [path for *_, path in sorted(found)]

    def _batches(
        self,
        component: str,
        columns: Sequence[str],
        symbols: Collection[str],
        start: dt.datetime,
        end: dt.datetime,
        per_read: int,
    ) -> Iterator[Any]:
        one_day = dt.timedelta(days=1)
        files = self.files(component, symbols, start.date() - one_day, end.date() + one_day)
        return _read_parquet_batches(files, columns, self.threads, per_read)


@dataclass
class ParquetFilesSource(_ReadsInBatches):
    """Parquet files named per component (for example the offline store's partition files); no pruning."""

    files_by_component: Mapping[str, Sequence[str | Path]]
    threads: int = 4
    columns_per_read: int = COLUMNS_PER_READ  # 0: all at once

    def _batches(
        self,
        component: str,
        columns: Sequence[str],
        symbols: Collection[str],
        start: dt.datetime,
        end: dt.datetime,
        per_read: int,
    ) -> Iterator[Any]:
        files = [str(f) for f in self.files_by_component.get(component, ())]
        return _read_parquet_batches(files, columns, self.threads, per_read)


# DuckDB keeps every block of a database file it has read until it runs short of memory (its limit is 80 % of the
# machine's), beside a result it does not count (Arrow's): about 150 MB for the bench's 5 days and 750 MB of
# result at 100,000 rows of 932 columns, and for a training job over a year of data, blocks up to that limit.
# While it reads a component, its limit is lowered to this: it evicts the blocks it has scanned as it goes and
# reuses their memory for the next ones, however long the window. After the component, the limit is lowered to
# the second for a moment, which evicts the rest (DuckDB hands their memory back to the system then: the next
# read faults it in again, about 0.1 s for the bench's 5 days).
_SCAN_MEMORY_LIMIT = 48 * 2**20
_EVICTION_LIMIT = 2**20
# What a scan needs at least, per scanning thread and column: the column's block and room for the next.
_SCAN_MEMORY_PER_COLUMN = 2 * 256 * 2**10
# Rows per record batch of a streamed DuckDB result.
_ROWS_PER_STREAM = 1_000_000


@functools.cache
def _default_memory_limit() -> str:
    """DuckDB's default memory limit as it shows it (a share of the machine's memory)."""
    import duckdb

    with duckdb.connect(":memory:") as connection:
        return _memory_limit(connection)


def _memory_limit(connection: Any) -> str:
    return str(connection.execute("SELECT current_setting('memory_limit')").fetchall()[0][0])


@dataclass
class DuckDBSource(_ReadsInBatches):
    """The DuckDB offline store's tables (`{dataset}.{component}_features`) through an open connection.

    While it reads a component, the database instance keeps at most `scan_memory_limit` bytes of the file's
    blocks, or what a scan of a batch needs if that is more, and after it drops them (None: as many as DuckDB
    likes, until it runs short of memory): they would otherwise stay in memory beside the result for as long as
    the connection is open. The limit is the instance's (every connection to the file in this process): it is
    lowered while components are read and put back after. It is lowered only from DuckDB's default, which RESET
    restores exactly (DuckDB shows a limit rounded down and parses it back lower still: 18.8 GiB, set again,
    shows 18.7 GiB), so a limit set by someone else is left alone, and the blocks with it. A batch that needs
    more memory than the lowered limit is read again under the default. The next call reads the blocks from the
    file again (the operating system's cache, normally), but for `keep_bytes` of them (memory_plan: what the
    call's result leaves of the memory budget), which stay while the connection is open: the limit is
    `keep_bytes` while it reads, if that is more, and the blocks are dropped down to it after."""

    connection: Any  # duckdb.DuckDBPyConnection
    dataset: str
    columns_per_read: int = COLUMNS_PER_READ  # 0: all at once
    scan_memory_limit: int | None = _SCAN_MEMORY_LIMIT  # bytes
    keep_bytes: int = 0
    # The components being read: the limit is lowered by the first and put back by the last.
    _reading: int = field(default=0, init=False, repr=False, compare=False)
    _lowered: bool = field(default=False, init=False, repr=False, compare=False)
    _reading_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)

    def _lower_limit(self, connection: Any, columns: int) -> None:
        import duckdb

        with self._reading_lock:
            self._reading += 1
            floor = self.scan_memory_limit
            if self._reading == 1 and floor is not None and _memory_limit(connection) == _default_memory_limit():
                threads = int(connection.execute("SELECT current_setting('threads')").fetchall()[0][0])
                needed = threads * (columns + len(_key_fields())) * _SCAN_MEMORY_PER_COLUMN
                try:
                    limit = max(int(floor), needed, self.keep_bytes)
                    connection.execute(f"SET memory_limit = '{limit // 2**10}KiB'")
                except duckdb.OutOfMemoryException:
                    return  # more than that is pinned: DuckDB left the limit as it was
                self._lowered = True

    def _reset_limit(self, connection: Any, *, done: bool) -> None:
        """Puts the limit back: for a batch that needs more (not `done`), or after the last component being read,
        whose blocks are dropped first down to `keep_bytes` (the limit lowered to 1 MB evicts every block no query
        has pinned)."""
        import duckdb

        with self._reading_lock:
            if done:
                self._reading -= 1
            if self._lowered and (self._reading == 0 or not done):
                try:
                    if done:
                        kept = max(_EVICTION_LIMIT, self.keep_bytes)
                        connection.execute(f"SET memory_limit = '{kept // 2**10}KiB'")
                except duckdb.OutOfMemoryException:
                    pass  # more than that is pinned: DuckDB evicted what it could and left the limit as it was
                finally:
                    connection.execute("RESET memory_limit")
                self._lowered = False

    def _batches(
        self,
        component: str,
        columns: Sequence[str],
        symbols: Collection[str],
        start: dt.datetime,
        end: dt.datetime,
        per_read: int,
    ) -> Iterator[Any]:
        import duckdb

        table = f"{component}_features"
        connection = self.connection.cursor()  # a connection of its own: retrieval reads components in threads
        wanted = list(dict.fromkeys(columns))
        lowering = False
        try:
            exists = connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?",
                [self.dataset, table],
            ).fetchall()
            present = {row[0] for row in exists}
            if not present or not symbols:
                return
            source = f'"{_checked(self.dataset)}"."{_checked(table)}"'
            # One transaction for every batch: each reads the same snapshot, so the same rows.
            connection.execute("BEGIN TRANSACTION")
            lowering = True
            self._lower_limit(connection, min(len(wanted), per_read or len(wanted)))
            for batch in _column_batches((c for c in wanted if c in present), per_read):
                select = ", ".join(f'"{_checked(c)}"' for c in ["symbol", "ts_minute", "dte", *batch])
                # A list of values rather than a subquery: DuckDB checks it in the scan, not in a join (~0.05 s
                # less a call for the bench's 19 batches).
                sql = (
                    f"SELECT {select} FROM {source} "  # noqa: S608
                    f"WHERE ts_minute BETWEEN ? AND ? AND symbol IN ({', '.join('?' * len(symbols))})"
                )
                params = [start, end, *sorted(symbols)]
                # Streamed rather than materialized in DuckDB first (to_arrow_table): no second copy of the batch
                # in DuckDB's memory, and faster.
                try:
                    data = connection.sql(sql, params=params).to_arrow_reader(_ROWS_PER_STREAM).read_all()
                except (duckdb.OutOfMemoryException, OSError) as error:
                    # Raised by DuckDB, or by Arrow's reader of its stream (as an OSError).
                    if not self._lowered or "Out of Memory" not in str(error):
                        raise
                    # The error aborted the transaction: the batch is read again in a new one. A file open
                    # read-only (as the offline store reads) has no writer, so it is the same snapshot.
                    connection.execute("ROLLBACK")
                    self._reset_limit(connection, done=False)
                    connection.execute("BEGIN TRANSACTION")
                    data = connection.sql(sql, params=params).to_arrow_reader(_ROWS_PER_STREAM).read_all()
                yield data
                del data
            connection.execute("COMMIT")
        finally:
            if lowering:
                self._reset_limit(connection, done=True)
            connection.close()


@dataclass
class ArrowSource:
    """Component tables already in memory, each with `symbol`, `dte`, `ts_minute` and feature columns."""

    tables: Mapping[str, Any]
    # The sorted keys of each component, built on first use and reused by every retrieval.
    _key_indexes: dict[str, "_KeyIndex"] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def load(
        cls,
        source: FeatureSource,
        features: Sequence[FeatureRef],
        *,
        symbols: Collection[str],
        start: dt.datetime,
        end: dt.datetime,
    ) -> "ArrowSource":
        """Reads the selected features' components once, each as one contiguous table."""
        tables = {}
        for component, refs in _by_component(features).items():
            table = source.read(component, [r.column for r in refs], symbols=symbols, start=start, end=end)
            if table is not None:
                tables[component] = table.combine_chunks()
        loaded = cls(tables)
        for component in tables:
            loaded.key_index(component)
        return loaded

    def key_index(self, component: str) -> "_KeyIndex":
        index = self._key_indexes.get(component)
        if index is None:
            index = self._key_indexes[component] = _KeyIndex.build(self.tables[component])
        return index

    def read(
        self, component: str, columns: Sequence[str], *, symbols: Collection[str], start: dt.datetime, end: dt.datetime
    ) -> Any:
        table = self.tables.get(component)
        if table is None:
            return None
        names = set(table.column_names)
        return table.select(["symbol", "ts_minute", "dte", *(c for c in dict.fromkeys(columns) if c in names)])


def _checked(name: str) -> str:
    ident(name)
    return name


def _by_component(features: Sequence[FeatureRef]) -> dict[str, list[FeatureRef]]:
    grouped: dict[str, list[FeatureRef]] = {}
    for ref in features:
        grouped.setdefault(ref.component, []).append(ref)
    return grouped


# --- the as-of match -----------------------------------------------------------------------------------------


def _parse_timestamps(strings: Any) -> Any:
    """ISO-8601 strings, with a zone offset or without one (then UTC), as timestamp[us, UTC]."""
    zoned = pc.match_substring_regex(strings, r"(Z|[+-]\d{2}:?\d{2})$")
    with_zone = pc.cast(pc.if_else(zoned, strings, None), pa.timestamp("us", tz="UTC"))
    naive = pc.cast(pc.if_else(zoned, None, strings), pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    return pc.coalesce(with_zone, naive)


def _timestamps_ns(array: Any) -> tuple[Int64Array, BoolArray]:
    """Any timestamp (naive ones are UTC), date or ISO-8601 string column -> int64 UTC nanoseconds, validity."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    try:
        if pa.types.is_timestamp(kind):
            array = array.cast(pa.timestamp("ns", tz=kind.tz or "UTC"))
        elif pa.types.is_date(kind):
            array = array.cast(pa.timestamp("ns"))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            array = _parse_timestamps(array).cast(pa.timestamp("ns", tz="UTC"))
        else:
            raise RetrievalError(f"event_timestamp must be a timestamp, not {kind}")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise RetrievalError(f"event_timestamp: {error}") from error
    valid = np.asarray(array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    values = np.asarray(array.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    return values, valid


@dataclass(frozen=True)
class _Entities:
    count: int
    symbols: Any  # pa.Array of the distinct symbols
    pairs: Int64Array  # sorted distinct (symbol, dte) keys (symbol as an index into `symbols`)
    # The rows that can match (known symbol, dte and event_timestamp) sorted by (pair, event_timestamp):
    # sorted queries make the binary searches of every component cache-friendly.
    rows: Int64Array
    group: Int64Array  # index into `pairs`
    ts_ns: Int64Array

    @property
    def usable(self) -> bool:
        return bool(self.rows.size)


def _pair_keys(codes: Int64Array, dte: Int64Array) -> Int64Array:
    return (codes << 32) + (dte + (1 << 31))


def _entities(table: Any) -> _Entities:
    missing = [c for c in ENTITY_COLUMNS if c not in table.column_names]
    if missing:
        raise RetrievalError(f"the entity rows have no column {', '.join(missing)}")
    n = table.num_rows
    symbol = table["symbol"].combine_chunks()
    if not (pa.types.is_string(symbol.type) or pa.types.is_large_string(symbol.type)):
        try:
            symbol = symbol.cast(pa.string())
        except pa.ArrowNotImplementedError as error:
            raise RetrievalError(f"symbol must be a string, not {symbol.type}") from error
    symbols = pc.unique(symbol.drop_null()).cast(pa.string())
    codes = np.asarray(pc.index_in(symbol, value_set=symbols).fill_null(-1).to_numpy(), dtype=np.int64)
    dte_array = table["dte"].combine_chunks()
    if pa.types.is_floating(dte_array.type):
        # pandas turns an integer column with missing values into floats.
        try:
            dte_array = dte_array.cast(pa.int64())
        except pa.ArrowInvalid as error:
            raise RetrievalError("dte must hold whole numbers") from error
    if not pa.types.is_integer(dte_array.type):
        raise RetrievalError(f"dte must be an integer, not {dte_array.type}")
    dte_valid = np.asarray(dte_array.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    dte = np.asarray(dte_array.cast(pa.int64()).fill_null(0).to_numpy(), dtype=np.int64)
    if dte.size and (dte.min() < -(1 << 31) or dte.max() >= 1 << 31):
        raise RetrievalError("dte is out of range")
    ts_ns, ts_valid = _timestamps_ns(table["event_timestamp"])
    rows = np.flatnonzero((codes >= 0) & dte_valid & ts_valid)
    pairs, group = np.unique(_pair_keys(codes[rows], dte[rows]), return_inverse=True)
    ts = ts_ns[rows]
    order = np.lexsort((ts, group))
    return _Entities(
        count=n,
        symbols=symbols,
        pairs=pairs.astype(np.int64),
        rows=rows[order].astype(np.int64),
        group=group[order].astype(np.int64),
        ts_ns=ts[order],
    )


@dataclass(frozen=True)
class _KeyIndex:
    """A component's rows sorted once by (symbol, dte, ts_minute), packed into one int64 key each: the
    (symbol, dte) group times a stride plus the rank of ts_minute among the distinct values."""

    symbols: Any  # pa.Array of the distinct symbols
    pairs: Int64Array  # sorted distinct (symbol, dte) keys (symbol as an index into `symbols`)
    distinct_ts: Int64Array
    sorted_key: Int64Array
    sorted_row: Int64Array  # the table row of each sorted key
    sorted_group: Int64Array
    sorted_ts: Int64Array

    @classmethod
    def build(cls, data: Any) -> "_KeyIndex":
        symbol = data["symbol"]
        if not pa.types.is_string(symbol.type):
            symbol = symbol.cast(pa.string())
        symbols = pc.unique(symbol.drop_null())
        if isinstance(symbols, pa.ChunkedArray):
            symbols = symbols.combine_chunks()
        codes = np.asarray(pc.index_in(symbol, value_set=symbols).fill_null(-1).to_numpy(), dtype=np.int64)
        dte_column = data["dte"].cast(pa.int64())
        dte = np.asarray(dte_column.fill_null(0).to_numpy(), dtype=np.int64)
        ts, usable = _timestamps_ns(data["ts_minute"])
        usable &= codes >= 0
        if dte_column.null_count:
            usable &= np.asarray(dte_column.is_valid().to_numpy(), dtype=bool)
        rows = np.flatnonzero(usable)
        pairs, group = np.unique(_pair_keys(codes[rows], dte[rows]), return_inverse=True)
        group = group.astype(np.int64)
        row_ts = ts[rows]
        distinct_ts = np.unique(row_ts)
        key = group * (distinct_ts.size + 1) + np.searchsorted(distinct_ts, row_ts, side="right")
        order = np.argsort(key, kind="stable")
        return cls(
            symbols=symbols,
            pairs=pairs.astype(np.int64),
            distinct_ts=distinct_ts,
            sorted_key=key[order],
            sorted_row=rows[order].astype(np.int64),
            sorted_group=group[order],
            sorted_ts=row_ts[order],
        )


@dataclass(frozen=True)
class _Match:
    row: Int64Array  # the matched source row of each entity row (meaningless where age is -1)
    age_ns: Int64Array  # event_timestamp - matched ts_minute; -1 where nothing matched


def _asof_match(entities: _Entities, index: _KeyIndex) -> _Match:
    """For each entity row, the source row with the latest ts_minute <= event_timestamp of the same symbol and
    dte (the last such row in source order on ties): one binary search of the packed keys."""
    n = entities.count
    row = np.zeros(n, dtype=np.int64)
    age = np.full(n, -1, dtype=np.int64)
    if not entities.usable or index.sorted_key.size == 0:
        return _Match(row, age)
    # The entity rows' (symbol, dte) groups in the index's numbering, -1 where the source has no such group.
    symbol_map = np.asarray(pc.index_in(entities.symbols, value_set=index.symbols).fill_null(-1).to_numpy())
    entity_codes = symbol_map[entities.pairs >> 32].astype(np.int64)
    source_pairs = _pair_keys(entity_codes, (entities.pairs & 0xFFFFFFFF) - (1 << 31))
    slot = np.minimum(np.searchsorted(index.pairs, source_pairs), index.pairs.size - 1)
    group_map = np.where((entity_codes >= 0) & (index.pairs[slot] == source_pairs), slot, -1)
    group = group_map[entities.group]
    stride = index.distinct_ts.size + 1
    key = group * stride + np.searchsorted(index.distinct_ts, entities.ts_ns, side="right")
    hit = np.searchsorted(index.sorted_key, key, side="right") - 1
    np.maximum(hit, 0, out=hit)
    found = (group >= 0) & (index.sorted_group[hit] == group) & (index.sorted_ts[hit] <= entities.ts_ns)
    row[entities.rows] = index.sorted_row[hit]
    age[entities.rows] = np.where(found, entities.ts_ns - index.sorted_ts[hit], -1)
    return _Match(row, age)


_UNSIGNED: dict[int, Any] = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def _fixed_width(kind: Any) -> bool:
    if pa.types.is_interval(kind) or not (
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_temporal(kind)
    ):
        return False
    return bool(kind.bit_width in (8, 16, 32, 64))


@dataclass(frozen=True)
class _Gather:
    """Gathers columns at the matched rows, null where there is no value within one TTL.

    Fixed-width columns are gathered with numpy into one block per width, each column a contiguous row of it:
    one exact allocation per block instead of one per column. The indices carry no nulls (a gather with null
    indices is several times slower); the TTL's validity bitmap is computed once and shared by every gathered
    column that has no nulls of its own.
    """

    rows: Int64Array  # without nulls: rows without a value point at row 0 and are masked
    within: Any  # pa.Array of bool: a value within the TTL
    validity: Any  # pa.Buffer: `within` as a bitmap
    null_count: int

    @classmethod
    def for_ttl(cls, match: _Match, ttl_seconds: int) -> "_Gather":
        within = (match.age_ns >= 0) & (match.age_ns <= ttl_seconds * _NS_PER_SECOND)
        validity = pa.py_buffer(np.packbits(within, bitorder="little"))
        rows = np.where(within, match.row, 0)
        return cls(rows, pa.array(within, type=pa.bool_()), validity, int(within.size - np.count_nonzero(within)))

    def columns(self, data: Any, names: Sequence[str]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        blocks: dict[int, list[Any]] = {}
        others = []
        for name in names:
            column = data[name]
            if _fixed_width(column.type):
                blocks.setdefault(column.type.bit_width // 8, []).append(name)
            else:
                others.append(name)
        n = self.rows.size
        for width, block_names in blocks.items():
            block = np.empty((len(block_names), n), dtype=_UNSIGNED[width])
            for position, name in enumerate(block_names):
                column = data[name]
                # A column read from several files comes in chunks: one column at a time is made contiguous.
                chunk = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
                values = np.frombuffer(chunk.buffers()[1], dtype=_UNSIGNED[width], count=chunk.offset + len(chunk))
                np.take(values[chunk.offset :], self.rows, out=block[position], mode="wrap")
                validity, null_count = self._validity(chunk)
                data_buffer = pa.py_buffer(block[position])
                result[name] = pa.Array.from_buffers(chunk.type, n, [validity, data_buffer], null_count=null_count)
        if others:
            gathered = data.select(others).take(pa.array(self.rows, type=pa.int64()))
            for name in others:
                result[name] = self._mask(gathered[name])
        return result

    def _validity(self, source: Any) -> tuple[Any, int]:
        if source.null_count == 0:
            return self.validity, self.null_count
        combined = pc.and_(source.is_valid().take(pa.array(self.rows, type=pa.int64())), self.within)
        return combined.buffers()[1], len(combined) - pc.sum(combined).as_py()

    def _mask(self, column: Any) -> Any:
        gathered = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
        kind = gathered.type
        flat = pa.types.is_boolean(kind) or pa.types.is_string(kind) or pa.types.is_binary(kind)
        if not flat or gathered.offset != 0 or gathered.null_count:
            return pc.if_else(self.within, gathered, pa.scalar(None, kind))
        buffers = [self.validity, *gathered.buffers()[1:]]
        return pa.Array.from_buffers(kind, len(gathered), buffers, null_count=self.null_count)


def _entity_table(entities: Any) -> Any:
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pa.RecordBatch):
        return pa.Table.from_batches([entities])
    # A pandas DataFrame (pandas is not imported here).
    return pa.Table.from_pandas(entities, preserve_index=False)


def _output_names(table: Any, features: Sequence[FeatureRef]) -> list[str]:
    names = [f.name for f in features]
    counts = Counter([*table.column_names, *names])
    clashes = sorted(name for name in set(names) if counts[name] > 1)
    if clashes:
        raise RetrievalError(f"feature names clash with entity columns or each other: {', '.join(clashes)}")
    return names


def entity_keys(entities: Any, features: Sequence[FeatureRef]) -> Any:
    """What the BigQuery query (`training_sql`) reads of the entity rows, typed as BigQuery keys are typed:
    `symbol` STRING, `dte` INT64, `event_timestamp` TIMESTAMP and `entity_row` numbering the rows.

    The rows are checked and read as `retrieve_point_in_time` reads them (naive timestamps and ISO strings
    without an offset are UTC; a pandas float `dte` holding whole numbers is an integer); a row whose key cannot
    be used keeps a null there and matches nothing. BigQuery keeps microseconds: finer event times are floored,
    which keeps `ts_minute <= event_timestamp` exact (the TTL bound can differ within the dropped nanoseconds).
    Only the keys are loaded; the caller puts the results back next to the original columns
    (`with_feature_columns`).
    """
    table = _entity_table(entities)
    _output_names(table, features)
    prepared = _entities(table)
    valid = np.zeros(table.num_rows, dtype=bool)
    valid[prepared.rows] = True
    symbol = table["symbol"].combine_chunks().cast(pa.string())
    dte = table["dte"].combine_chunks().cast(pa.int64())
    ts_ns, ts_valid = _timestamps_ns(table["event_timestamp"])
    event = pa.array(ts_ns // 1000, pa.int64(), mask=~ts_valid).cast(pa.timestamp("us", tz="UTC"))
    return pa.table(
        {
            "symbol": symbol,
            "dte": dte,
            "event_timestamp": event,
            ROW_COLUMN: pa.array(np.arange(table.num_rows, dtype=np.int64)),
        }
    )


def with_feature_columns(entities: Any, computed: Any, features: Sequence[FeatureRef], *, first_row: int = 0) -> Any:
    """The entity rows, in their order and with all their columns as given, followed by each feature's column of
    `computed` (one row per entity row, numbered by `entity_row` as `entity_keys` numbered them; `entities` is
    then the slice of the rows numbered from `first_row`)."""
    table = _entity_table(entities)
    names = _output_names(table, features)
    if ROW_COLUMN in computed.column_names:
        order = computed[ROW_COLUMN].to_numpy()
        expected = np.arange(first_row, first_row + table.num_rows)
        if order.size != table.num_rows or not np.array_equal(order, expected):
            raise RetrievalError(
                f"the query returned {order.size} rows for {table.num_rows} entity rows, or not in their order"
            )
    elif computed.num_rows != table.num_rows:
        raise RetrievalError(f"the query returned {computed.num_rows} rows for {table.num_rows} entity rows")
    return pa.Table.from_arrays(
        [*table.columns, *(computed[name] for name in names)], names=[*table.column_names, *names]
    )


def rebatched(batches: Iterable[Any], rows: int) -> Iterator[Any]:
    """Tables or record batches as tables of `rows` rows each (the last may be shorter), in order."""
    size = max(1, rows)
    held: list[Any] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        held.append(batch)
        count += batch.num_rows
        while count >= size:
            table = _as_table(held)
            yield table.slice(0, size)
            rest = table.slice(size)
            held, count = ([rest] if rest.num_rows else []), rest.num_rows
    if count:
        yield _as_table(held)


def _as_table(parts: list[Any]) -> Any:
    tables = [pa.Table.from_batches([p]) if isinstance(p, pa.RecordBatch) else p for p in parts]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def event_window(entities: Any, features: Sequence[FeatureRef]) -> tuple[dt.datetime, dt.datetime] | None:
    """[min event - max TTL, max event] of the usable entity rows: the only ts_minute values that matter."""
    prepared = _entities(_entity_table(entities))
    return _window(prepared, features)


def _window(entities: _Entities, features: Sequence[FeatureRef]) -> tuple[dt.datetime, dt.datetime] | None:
    if not entities.usable:
        return None
    max_ttl = max((f.ttl_seconds for f in features), default=0)
    start_us = (int(entities.ts_ns.min()) - max_ttl * _NS_PER_SECOND) // 1000
    end_us = -(-int(entities.ts_ns.max()) // 1000)  # ceiling: the window must include the last event
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return epoch + dt.timedelta(microseconds=start_us), epoch + dt.timedelta(microseconds=end_us)


class _ReadAhead:
    """Runs several iterators of batches on `readers` threads of their own while the caller gathers the batches
    already read: reading a batch (decoding Parquet, DuckDB's scan and Arrow conversion, which release the GIL)
    overlaps the gather of the one before it, and with two readers two iterators are read at once (a DuckDB
    scan of a table of one row group, or a Parquet file's decode, runs on one core). Iterate over it for each
    iterator's batches in turn, in order; the threads take the iterators in that order.

    Each iterator is read at most one batch ahead of the caller: for the iterator the caller is on, its batch
    and the next one are held; each thread on a later iterator holds one batch it read, waiting for the caller.
    Leaving the `with` block early (an error in the caller) stops every thread after its current batch and
    closes the iterators they were reading."""

    _END = object()

    def __init__(self, openers: Sequence[Callable[[], Iterable[Any]]], *, readers: int = 1) -> None:
        self._openers = openers
        self._ready: list[queue.SimpleQueue[Any]] = [queue.SimpleQueue() for _ in openers]
        # Per iterator, the batch a thread may read before the caller has taken the one before it.
        self._ahead = [threading.Semaphore(1) for _ in openers]
        self._taken = 0  # the iterators the threads have taken, in order
        self._taking = threading.Lock()
        self._stopped = threading.Event()
        self._threads = [
            threading.Thread(target=self._read, name=f"retrieval-read-ahead-{number}", daemon=True)
            for number in range(max(1, min(readers, len(openers))))
        ]

    def __enter__(self) -> Iterator[Iterator[Any]]:
        for thread in self._threads:
            thread.start()
        return (self._batches(position) for position in range(len(self._openers)))

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        for ahead in self._ahead:
            ahead.release()  # a reader waiting to read ahead wakes up and sees the stop
        for thread in self._threads:
            thread.join()

    def _read(self) -> None:
        while not self._stopped.is_set():
            with self._taking:
                position = self._taken
                self._taken += 1
            if position >= len(self._openers):
                return
            ready, ahead = self._ready[position], self._ahead[position]
            iterator: Iterator[Any] | None = None
            try:
                iterator = iter(self._openers[position]())
                while True:
                    ahead.acquire()
                    if self._stopped.is_set():
                        return
                    batch = next(iterator, self._END)
                    end = batch is self._END
                    ready.put(batch)
                    del batch
                    if end:
                        break
            except BaseException as error:  # noqa: BLE001 (handed to the caller, which raises it)
                ready.put(error)
                return
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

    def _batches(self, position: int) -> Iterator[Any]:
        ready, ahead = self._ready[position], self._ahead[position]
        while True:
            batch = ready.get()
            ahead.release()  # the thread may read the next batch while this one is gathered
            if isinstance(batch, BaseException):
                raise batch
            if batch is self._END:
                return
            yield batch
            del batch


def retrieve_point_in_time(
    entities: Any,
    features: Sequence[FeatureRef],
    source: FeatureSource,
    *,
    threads: int | None = None,
    readers: int | None = None,
) -> Any:
    """The entity rows, in their order and with all their columns, followed by one column per feature (named
    after the feature): its latest value at or before `event_timestamp` for the row's symbol and dte within
    the feature's TTL, null otherwise. Rows with a null or unknown symbol, dte or event_timestamp get nulls.

    `entities`: a pyarrow Table or RecordBatch, or a pandas DataFrame, with `symbol`, `dte`,
    `event_timestamp` (timezone-naive timestamps are UTC) and any label columns. Components are gathered on
    `threads` threads (default: the number of cores, at most 4, for an ArrowSource; one at a time for sources
    that read, whose readers have threads of their own). A source that reads is read by `readers` threads
    (default: memory_plan's, within FCC_RETRIEVAL_MEMORY_MIB), each a component at a time, ahead of the gather.
    """
    table = _entity_table(entities)
    names = _output_names(table, features)
    prepared = _entities(table)
    window = _window(prepared, features)
    symbols = set(prepared.symbols.to_pylist())

    def nulls(ref: FeatureRef) -> Any:
        return pa.nulls(table.num_rows, ARROW_TYPES.get(ref.dtype, pa.float64()))

    def component_tables(component: str, refs: list[FeatureRef]) -> Iterable[Any]:
        assert window is not None
        wanted = [r.column for r in refs]
        if isinstance(source, BatchedFeatureSource):
            return source.read_batches(component, wanted, symbols=symbols, start=window[0], end=window[1])
        return [source.read(component, wanted, symbols=symbols, start=window[0], end=window[1])]

    def component_columns(component: str, refs: list[FeatureRef], tables: Iterable[Any] | None) -> dict[str, Any]:
        if window is None:
            return {ref.name: nulls(ref) for ref in refs}
        if tables is None:
            tables = component_tables(component, refs)
        found: dict[tuple[int, str], Any] = {}
        keys = match = None
        gathers: dict[int, _Gather] = {}
        for data in tables:
            if data is None or data.num_rows == 0:
                continue
            # Every batch brings its keys: the match is reused while they are the same rows in the same order.
            batch_keys = data.select(["symbol", "dte", "ts_minute"])
            if match is None or not batch_keys.equals(keys):
                index = source.key_index(component) if isinstance(source, ArrowSource) else _KeyIndex.build(data)
                keys, match, gathers = batch_keys, _asof_match(prepared, index), {}
            present = set(data.column_names)
            by_ttl: dict[int, list[str]] = {}
            for ref in refs:
                if ref.column in present and (ref.ttl_seconds, ref.column) not in found:
                    by_ttl.setdefault(ref.ttl_seconds, []).append(ref.column)
            for ttl, group in by_ttl.items():
                if ttl not in gathers:
                    gathers[ttl] = _Gather.for_ttl(match, ttl)
                for column, values in gathers[ttl].columns(data, list(dict.fromkeys(group))).items():
                    found[(ttl, column)] = values
            del data
        if not isinstance(source, ArrowSource):
            # Decoding leaves freed blocks in Arrow's allocator: handing them back lowers the peak by about 60 MB for
            # 100,000 rows (the next read faults its pages in again: about 0.05 s).
            pa.default_memory_pool().release_unused()
        return {
            ref.name: found[(ref.ttl_seconds, ref.column)] if (ref.ttl_seconds, ref.column) in found else nulls(ref)
            for ref in refs
        }

    columns: dict[str, Any] = {}
    groups = list(_by_component(features).items())
    # Readers of files and databases use their own threads, and a component read at a time keeps memory low.
    default = min(4, os.cpu_count() or 1) if isinstance(source, ArrowSource) else 1
    workers = max(1, min(threads or default, len(groups)))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(lambda item: component_columns(item[0], item[1], None), groups):
                columns.update(result)
    elif isinstance(source, ArrowSource) or window is None:
        for component, refs in groups:
            columns.update(component_columns(component, refs, None))
    else:
        # A source that reads: the next batches are read (decoded, the GIL released) while this one is gathered.
        openers = [functools.partial(component_tables, *group) for group in groups]
        with _ReadAhead(openers, readers=readers or memory_plan(table.num_rows, features).readers) as batches:
            for (component, refs), tables in zip(groups, batches, strict=True):
                columns.update(component_columns(component, refs, tables))
    return pa.Table.from_arrays(
        [*table.columns, *(columns[ref.name] for ref in features)], names=[*table.column_names, *names]
    )


# --- files ---------------------------------------------------------------------------------------------------


def read_entity_file(path: str | Path) -> Any:
    """An entity file (Parquet, or CSV with a header) as a pyarrow Table; CSV timestamps without an offset
    are UTC."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        options = pacsv.ConvertOptions(
            column_types={"symbol": pa.string(), "dte": pa.int64(), "event_timestamp": pa.string()}
        )
        try:
            table = pacsv.read_csv(path, convert_options=options)
            if "event_timestamp" in table.column_names:
                index = table.column_names.index("event_timestamp")
                table = table.set_column(index, "event_timestamp", _parse_timestamps(table["event_timestamp"]))
        except pa.ArrowInvalid as error:
            raise RetrievalError(f"{path.name}: {error}") from error
        return table
    return pq.read_table(path)


def write_parquet_batches(batches: Iterable[Any], path: str | Path, *, row_group_size: int = 65_536) -> int:
    """Writes tables of one schema, in order, as one snappy Parquet file (not atomically: the caller writes to a
    temporary name and moves it); returns the rows written. A later table whose types differ from the first's is
    cast to them (a batch whose every value is null can carry the catalog's type where another has the data's)."""
    writer = None
    rows = 0
    try:
        for table in batches:
            if writer is None:
                writer = pq.ParquetWriter(str(path), table.schema, compression="snappy")
            elif not table.schema.equals(writer.schema):
                table = table.cast(writer.schema)
            writer.write_table(table, row_group_size=row_group_size)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise RetrievalError("no result to write")
    return rows


# --- BigQuery SQL --------------------------------------------------------------------------------------------


def training_sql(
    *,
    project: str,
    dataset: str,
    entity_table: str,
    features: Sequence[FeatureRef],
    event_range: tuple[dt.datetime, dt.datetime],
    entity_dataset: str | None = None,
) -> str:
    """The BigQuery query of the same semantics as `retrieve_point_in_time`.

    `entity_table` (in `entity_dataset`, default `dataset`) holds the entity rows with an INT64 `entity_row`
    column numbering them; the result is one row per entity row in `entity_row` order: the entity columns,
    then one column per feature. `event_range` is (min, max) event_timestamp of the entity rows: with the
    largest TTL it bounds the partitions read (`DATE(ts_minute)`), which `require_partition_filter` demands.
    """
    if not features:
        raise RetrievalError("select at least one feature")
    names = [f.name for f in features]
    if len(set(names)) != len(names):
        raise RetrievalError("feature names must be distinct")
    first, last = event_range
    max_ttl = max(f.ttl_seconds for f in features)
    first_day = (first.astimezone(dt.UTC) - dt.timedelta(seconds=max_ttl)).date()
    last_day = last.astimezone(dt.UTC).date()
    entities = qualified(project, entity_dataset or dataset, entity_table)
    ctes = []
    select = ["e.*"]
    joins = []
    for index, (component, refs) in enumerate(_by_component(features).items()):
        alias = f"pit_{index}"
        component_ttl = max(r.ttl_seconds for r in refs)
        columns = "".join(f", f.{ident(c)}" for c in dict.fromkeys(r.column for r in refs))
        # Identifiers are validated and quoted by ident() and qualified(); dates and TTLs are ints and dates.
        body = [
            f"SELECT e.{ident(ROW_COLUMN)} AS _entity_row, f.`ts_minute` AS _feature_ts{columns}",
            f"FROM {entities} AS e",
            f"JOIN {qualified(project, dataset, f'{component}_features')} AS f",
            "  ON f.`symbol` = e.`symbol` AND f.`dte` = e.`dte`",
            "  AND f.`ts_minute` <= e.`event_timestamp`",
            f"  AND f.`ts_minute` >= TIMESTAMP_SUB(e.`event_timestamp`, INTERVAL {int(component_ttl)} SECOND)",
            f"WHERE DATE(f.`ts_minute`) BETWEEN DATE '{first_day.isoformat()}' AND DATE '{last_day.isoformat()}'",
            "QUALIFY ROW_NUMBER() OVER (PARTITION BY e.`entity_row` ORDER BY f.`ts_minute` DESC) = 1",
        ]
        ctes.append(f"{alias} AS (\n  " + "\n  ".join(body) + "\n)")
        joins.append(f"LEFT JOIN {alias} ON {alias}._entity_row = e.{ident(ROW_COLUMN)}")
        for ref in refs:
            value = f"{alias}.{ident(ref.column)}"
            if ref.ttl_seconds < component_ttl:
                cutoff = f"TIMESTAMP_SUB(e.`event_timestamp`, INTERVAL {int(ref.ttl_seconds)} SECOND)"
                value = f"IF({alias}._feature_ts >= {cutoff}, {value}, NULL)"
            select.append(f"{value} AS {ident(ref.name)}")
    return (
        "WITH "
        + ",\n".join(ctes)
        + "\nSELECT "
        + ",\n  ".join(select)
        + f"\nFROM {entities} AS e\n"
        + "\n".join(joins)
        + f"\nORDER BY e.{ident(ROW_COLUMN)}"
    )
