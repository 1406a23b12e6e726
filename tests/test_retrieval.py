"""Sample data and point-in-time retrieval: the fast path, every source and the BigQuery SQL (run on DuckDB, and
by the BigQuery offline store with the real client against the local emulator) held equal, cell for cell, to
pandas `merge_asof` on data whose timestamps are off the minute grid."""

import datetime as dt
import hashlib
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from catalog import rules
from provisioning import retrieval
from provisioning.ddl import KEY_COLUMNS, Column, TableSpec, to_duckdb
from provisioning.offline.bigquery_store import BigQueryOfflineStore
from provisioning.retrieval import (
    ROW_COLUMN,
    ArrowSource,
    DuckDBSource,
    FeatureRef,
    MemoryPlan,
    ParquetFilesSource,
    ParquetLayoutSource,
    RetrievalError,
    event_window,
    feature_refs_from_specs,
    memory_plan,
    read_entity_file,
    rebatched,
    retrieve_point_in_time,
    training_sql,
    write_parquet_batches,
)
from provisioning.sample_data import (
    HOLIDAYS,
    SYMBOLS,
    GenerationSummary,
    components_from_spec_dir,
    generate_sample_data,
    is_trading_day,
    recent_start,
    trading_days,
    weekly_expiries,
)
from tests.bigquery_emulator import Emulator, require_emulator_venv, running_emulator

IST = ZoneInfo("Asia/Kolkata")
START = dt.date(2025, 8, 11)  # a Monday; 2025-08-15 is a holiday
HOUR, DAY = 3600, 86400
COMPONENTS = [
    (
        "ca",
        [
            ("atm_straddle_premium", "float64", 48 * HOUR),
            ("atm_straddle_volume", "int64", 48 * HOUR),
            ("sentiment_class_changed", "bool", HOUR),
            ("atr_regime", "string", 600),
            ("prev_day_total_oi_close", "int64", 30 * DAY),
        ],
    ),
    (
        "cb",
        [
            ("straddle_mean_reversion_prob_30m", "float64", 1800),
            ("cpr_type", "string", 30 * DAY),
            ("underlying_above_ema_200", "bool", 48 * HOUR),
            ("cpr_width_pct_rank_20d", "float64", 30 * DAY),
            ("atm_straddle_oi_weighted_premium", "numeric", 48 * HOUR),
        ],
    ),
]
FEATURES = [
    FeatureRef(f"{component}_{column}", component, column, ttl, dtype)
    for component, columns in COMPONENTS
    for column, dtype, ttl in columns
]
LAYOUT_FILE = re.compile(
    r"^(?P<asset>[A-Z]+)/(?P<y>\d{4})/(?P<m>\d{2})/(?P<d>\d{2})/(?P<h>\d{2})/(?P<c>[a-z0-9]+)\.parquet$"
)


# --- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jittered_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four trading days of sample data with 5% nulls, every ts_minute moved by random seconds (and
    microseconds) into its minute, so no timestamp sits on the minute grid."""
    root = tmp_path_factory.mktemp("layout")
    generate_sample_data(
        root, components=COMPONENTS, start=START, days=4, seed=7, null_share=0.05, symbols=SYMBOLS[:3], expiries=2
    )
    rng = np.random.default_rng(11)
    for path in sorted(root.rglob("*.parquet")):
        table = pq.read_table(path)
        micros = pc.cast(table["ts_minute"], pa.int64()).to_numpy()
        shifted = micros + rng.integers(1, 60_000_000, micros.size)
        table = table.set_column(1, "ts_minute", pa.array(shifted, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
        pq.write_table(table, path)
    return root


@pytest.fixture(scope="module")
def tables(jittered_root: Path) -> dict[str, pa.Table]:
    return {
        component: pa.concat_tables(pq.read_table(p) for p in sorted(jittered_root.rglob(f"{component}.parquet")))
        for component, _ in COMPONENTS
    }


@pytest.fixture(scope="module")
def entities(tables: dict[str, pa.Table]) -> pa.Table:
    """Entity rows at every kind of instant: random ones (inside and outside sessions), exactly on a value,
    just before the first value, beyond each TTL, and rows that can match nothing."""
    rng = np.random.default_rng(5)
    source = tables["ca"]
    ts = pc.cast(source["ts_minute"], pa.int64()).to_numpy()
    symbols = source["symbol"].to_numpy(zero_copy_only=False)
    dtes = source["dte"].to_numpy()
    rows: list[tuple[str | None, int | None, int | None]] = []
    # Random instants over the whole period and a day either side.
    low, high = int(ts.min()) - DAY * 1_000_000, int(ts.max()) + DAY * 1_000_000
    for _ in range(600):
        i = int(rng.integers(0, ts.size))
        rows.append((str(symbols[i]), int(dtes[i]), int(rng.integers(low, high))))
    # Exactly on a value, and a microsecond before and after it.
    for i in rng.integers(0, ts.size, 150):
        for delta in (0, -1, 1):
            rows.append((str(symbols[i]), int(dtes[i]), int(ts[i]) + delta))
    # Before the first value of a (symbol, dte), and just past the end of the session (beyond 10 minutes).
    for symbol in np.unique(symbols):
        for dte in np.unique(dtes[symbols == symbol]):
            selected = ts[(symbols == symbol) & (dtes == dte)]
            rows.append((str(symbol), int(dte), int(selected.min()) - 1))
            rows.append((str(symbol), int(dte), int(selected.min()) - 3_600_000_000))
            rows.append((str(symbol), int(dte), int(selected.max()) + 20 * 60_000_000))
            rows.append((str(symbol), int(dte), int(selected.max()) + 3 * DAY * 1_000_000))
            rows.append((str(symbol), int(dte), int(selected.max()) + 40 * DAY * 1_000_000))
    # Exactly at the TTL after the last value of a (symbol, dte), and a microsecond past it.
    ttls = sorted({f.ttl_seconds for f in FEATURES})
    for table in tables.values():
        keys = table.group_by(["symbol", "dte"]).aggregate([("ts_minute", "max")]).to_pylist()
        for key in keys[:4]:
            last = int(key["ts_minute_max"].timestamp() * 1_000_000)
            for ttl in ttls:
                rows.append((key["symbol"], key["dte"], last + ttl * 1_000_000))
                rows.append((key["symbol"], key["dte"], last + ttl * 1_000_000 + 1))
    # Rows that can match nothing.
    some = int(ts[0])
    rows += [("SENSEX", 2, some), ("NIFTY", 99, some), (None, 2, some), ("NIFTY", None, some), ("NIFTY", 2, None)]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    return pa.table(
        {
            "symbol": pa.array([r[0] for r in rows], pa.string()),
            "dte": pa.array([r[1] for r in rows], pa.int64()),
            "event_timestamp": pa.array([r[2] for r in rows], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "label": pa.array(rng.normal(size=len(rows))),
            "label_class": pa.array(rng.choice(["up", "down"], len(rows))),
        }
    )


def reference(entities: pa.Table, tables: dict[str, pa.Table], features: list[FeatureRef]) -> dict[str, list[Any]]:
    """pandas merge_asof, backward, by symbol and dte, with each feature's TTL as tolerance."""
    left = entities.select(["symbol", "dte", "event_timestamp"]).to_pandas()
    left["_row"] = np.arange(len(left))
    left = left.dropna(subset=["symbol", "dte", "event_timestamp"])
    left["dte"] = left["dte"].astype("int64")
    left = left.sort_values("event_timestamp", kind="stable")
    result = {}
    for feature in features:
        source = tables[feature.component]
        right = source.select(["symbol", "dte", "ts_minute"]).to_pandas()
        right[feature.column] = pd.arrays.ArrowExtensionArray(source[feature.column])
        right = right.sort_values("ts_minute", kind="stable")
        merged = pd.merge_asof(
            left,
            right,
            left_on="event_timestamp",
            right_on="ts_minute",
            by=["symbol", "dte"],
            direction="backward",
            tolerance=pd.Timedelta(seconds=feature.ttl_seconds),
            allow_exact_matches=True,
        )
        values: list[Any] = [None] * entities.num_rows
        for row, value in zip(merged["_row"], merged[feature.column].tolist(), strict=True):
            values[row] = None if value is None or value is pd.NA else value
        result[feature.name] = values
    return result


def assert_matches_reference(result: pa.Table, entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    assert result.column_names == [*entities.column_names, *(f.name for f in FEATURES)]
    assert result.select(entities.column_names).equals(entities)
    expected = reference(entities, tables, FEATURES)
    for feature in FEATURES:
        assert result[feature.name].type == tables[feature.component][feature.column].type
        got = result[feature.name].to_pylist()
        mismatches = [i for i, (a, b) in enumerate(zip(got, expected[feature.name], strict=True)) if a != b]
        assert not mismatches, (feature.name, mismatches[:5], [got[i] for i in mismatches[:5]])


# --- point-in-time retrieval -----------------------------------------------------------------------------------


def test_reference_cases_are_all_present(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    """The data and entities exercise what they claim: nulls in values, off-grid timestamps, exact hits,
    misses before the first value and beyond the TTL."""
    expected = reference(entities, tables, FEATURES)
    assert all(tables[c][col].null_count for c, columns in COMPONENTS for col, _, _ in columns)
    micros = pc.cast(tables["ca"]["ts_minute"], pa.int64()).to_numpy()
    assert (micros % 60_000_000 != 0).all()
    events = set(pc.cast(entities["event_timestamp"], pa.int64()).drop_null().to_pylist())
    assert len(events & set(micros.tolist())) >= 100
    for feature in FEATURES:
        values = expected[feature.name]
        assert 0 < sum(v is None for v in values) < len(values)
    # A 10-minute TTL misses rows that the 48 h one finds.
    short, long = expected["ca_atr_regime"], expected["ca_atm_straddle_premium"]
    assert sum(a is None and b is not None for a, b in zip(short, long, strict=True)) > 20


def test_in_memory_matches_merge_asof(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    result = retrieve_point_in_time(entities, FEATURES, ArrowSource(tables))
    assert_matches_reference(result, entities, tables)


def test_parquet_layout_matches_merge_asof(
    entities: pa.Table, tables: dict[str, pa.Table], jittered_root: Path
) -> None:
    result = retrieve_point_in_time(entities, FEATURES, ParquetLayoutSource(jittered_root))
    assert_matches_reference(result, entities, tables)


def component_files(tables: dict[str, pa.Table], folder: Path) -> dict[str, list[Path]]:
    """Each component's table as one Parquet file in `folder`, for ParquetFilesSource."""
    files = {}
    for component, table in tables.items():
        files[component] = [folder / f"{component}.parquet"]
        pq.write_table(table, files[component][0])
    return files


def test_parquet_files_and_loaded_source_match(
    entities: pa.Table, tables: dict[str, pa.Table], jittered_root: Path, tmp_path: Path
) -> None:
    files = component_files(tables, tmp_path)
    expected = retrieve_point_in_time(entities, FEATURES, ArrowSource(tables))
    assert retrieve_point_in_time(entities, FEATURES, ParquetFilesSource(files)).equals(expected)
    window = event_window(entities, FEATURES)
    assert window is not None
    loaded = ArrowSource.load(
        ParquetLayoutSource(jittered_root), FEATURES, symbols=set(SYMBOLS), start=window[0], end=window[1]
    )
    assert retrieve_point_in_time(entities, FEATURES, loaded).equals(expected)


def duckdb_store(tables: dict[str, pa.Table], entities: pa.Table) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute('CREATE SCHEMA "market_regime_test"')
    for component, table in tables.items():
        connection.register("staged", table)
        connection.execute(f'CREATE TABLE "market_regime_test"."{component}_features" AS SELECT * FROM staged')  # noqa: S608
        connection.unregister("staged")
    numbered = entities.append_column(ROW_COLUMN, pa.array(np.arange(entities.num_rows), pa.int64()))
    connection.register("staged", numbered)
    connection.execute('CREATE TABLE "market_regime_test"."entities" AS SELECT * FROM staged')
    connection.unregister("staged")
    return connection


def test_duckdb_offline_store_matches(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    connection = duckdb_store(tables, entities)
    result = retrieve_point_in_time(entities, FEATURES, DuckDBSource(connection, "market_regime_test"))
    assert result.equals(retrieve_point_in_time(entities, FEATURES, ArrowSource(tables)))


def test_columns_read_in_batches_match_merge_asof(
    entities: pa.Table, tables: dict[str, pa.Table], jittered_root: Path, tmp_path: Path
) -> None:
    """Two columns a read: every batch's keys are checked against the first's and the match is reused."""
    files = component_files(tables, tmp_path)
    for source in (
        ParquetLayoutSource(jittered_root, columns_per_read=2),
        ParquetFilesSource(files, columns_per_read=2),
        DuckDBSource(duckdb_store(tables, entities), "market_regime_test", columns_per_read=2),
    ):
        assert_matches_reference(retrieve_point_in_time(entities, FEATURES, source), entities, tables)
        # Components read at once by several threads (the DuckDB store's limit lowered by the first, put back
        # by the last).
        assert_matches_reference(retrieve_point_in_time(entities, FEATURES, source, readers=3), entities, tables)
    connection = source.connection
    assert (
        connection.execute("SELECT current_setting('memory_limit')").fetchall()[0][0]
        == retrieval._default_memory_limit()
    )


def test_the_number_of_readers_is_checked(
    entities: pa.Table, tables: dict[str, pa.Table], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    source = ParquetFilesSource(component_files(tables, tmp_path))
    monkeypatch.setenv("FCC_RETRIEVAL_READERS", "2")
    assert_matches_reference(retrieve_point_in_time(entities, FEATURES, source), entities, tables)
    for bad in ("0", "two", "-1", "17"):
        monkeypatch.setenv("FCC_RETRIEVAL_READERS", bad)
        with pytest.raises(
            RetrievalError, match=f"FCC_RETRIEVAL_READERS must be a whole number from 1 to 16, not '{bad}'"
        ):
            retrieve_point_in_time(entities, FEATURES, source)


def test_the_memory_budget_plans_readers_and_kept_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """A call's result is estimated from its rows and the features' types; what it leaves of the budget buys a
    second reader first (on more than one core), then kept blocks; a result that leaves no room for a reader's
    batch is read from the DuckDB store in narrower batches. FCC_RETRIEVAL_READERS, when set, wins."""
    monkeypatch.delenv("FCC_RETRIEVAL_READERS", raising=False)
    monkeypatch.delenv("FCC_RETRIEVAL_MEMORY_MIB", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    features = [FeatureRef(f"f{i}", "c1", f"f{i}", 60) for i in range(100)]  # float64: 8 bytes and a bit
    assert retrieval.result_bytes(8_000, features) == 8_000 * 100 * 65 // 8
    assert retrieval.result_bytes(8, [FeatureRef("b", "c1", "b", 60, "bool")]) == 2  # two bits a row
    mib = 2**20
    assert retrieval.memory_budget() == retrieval.DEFAULT_MEMORY_MIB * mib
    result = retrieval.result_bytes(10_000, features)
    budget = 200 * mib
    lean = retrieval.LEAN_COLUMNS_PER_READ
    assert lean < retrieval.COLUMNS_PER_READ
    assert memory_plan(10_000, features, budget=budget) == MemoryPlan(2, budget - result - 64 * mib, 64)
    # Room for kept blocks but not for a second reader's 64 MiB: one reader, what is left kept.
    assert memory_plan(10_000, features, budget=result + 10 * mib) == MemoryPlan(1, 10 * mib, lean)
    assert memory_plan(10_000, features, budget=result // 2) == MemoryPlan(1, 0, lean)
    assert memory_plan(10_000, features, budget=0) == MemoryPlan(1, 0, lean)
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert memory_plan(10_000, features, budget=budget) == MemoryPlan(1, budget - result, 64)
    monkeypatch.setenv("FCC_RETRIEVAL_READERS", "3")
    assert memory_plan(10_000, features, budget=budget) == MemoryPlan(3, budget - result - 128 * mib, 64)
    assert memory_plan(10_000, features, budget=0) == MemoryPlan(3, 0, lean)
    monkeypatch.delenv("FCC_RETRIEVAL_READERS")
    monkeypatch.setenv("FCC_RETRIEVAL_MEMORY_MIB", "1024")
    assert retrieval.memory_budget() == 1024 * mib
    for bad in ("-1", "lots", "1.5", str((1 << 20) + 1)):
        monkeypatch.setenv("FCC_RETRIEVAL_MEMORY_MIB", bad)
        message = f"FCC_RETRIEVAL_MEMORY_MIB must be a whole number of MiB from 0 to 1048576, not '{bad}'"
        with pytest.raises(RetrievalError, match=re.escape(message)):
            memory_plan(10, features)


@dataclass
class ShuffledBatches:
    """A source whose every batch of columns comes in another row order."""

    tables: dict[str, pa.Table]

    def read(self, component: str, columns: Any, **window: Any) -> pa.Table | None:
        return self.tables.get(component)

    def read_batches(self, component: str, columns: Any, **window: Any) -> Iterator[pa.Table]:
        table = self.tables.get(component)
        if table is None:
            return
        for seed, first in enumerate(range(0, len(columns), 2)):
            order = np.random.default_rng(seed).permutation(table.num_rows)
            present = [c for c in columns[first : first + 2] if c in table.column_names]
            yield table.select(["symbol", "dte", "ts_minute", *present]).take(order)


def test_batches_in_another_row_order_are_matched_again(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    result = retrieve_point_in_time(entities, FEATURES, ShuffledBatches(tables))
    assert_matches_reference(result, entities, tables)


def test_bigquery_sql_on_duckdb_matches_the_fast_path(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    connection = duckdb_store(tables, entities)
    events = entities["event_timestamp"].drop_null()
    sql = training_sql(
        project="market-regime-test",
        dataset="market_regime_test",
        entity_table="entities",
        features=FEATURES,
        event_range=(pc.min(events).as_py(), pc.max(events).as_py()),
    )
    assert "QUALIFY ROW_NUMBER() OVER (PARTITION BY e.`entity_row` ORDER BY f.`ts_minute` DESC) = 1" in sql
    assert "WHERE DATE(f.`ts_minute`) BETWEEN DATE '" in sql
    (statement,) = to_duckdb(sql)
    from_sql = connection.sql(statement).to_arrow_table()
    fast = retrieve_point_in_time(entities, FEATURES, ArrowSource(tables))
    assert from_sql[ROW_COLUMN].to_pylist() == list(range(entities.num_rows))
    for feature in FEATURES:
        assert from_sql[feature.name].to_pylist() == fast[feature.name].to_pylist(), feature.name


@pytest.fixture(scope="module")
def bigquery_loaded(
    tables: dict[str, pa.Table], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BigQueryOfflineStore]:
    """The BigQuery store on the emulator, with the components' tables created as the runner creates them
    (partitioned by DATE(ts_minute), clustered, requiring a partition filter) and loaded by replace_partitions."""
    venv = require_emulator_venv()
    with running_emulator(venv, tmp_path_factory.mktemp("bigquery-emulator")) as emulator:
        yield _bigquery_loaded(emulator, tables, tmp_path_factory.mktemp("pit-bigquery"))


def _bigquery_loaded(emulator: Emulator, tables: dict[str, pa.Table], folder: Path) -> BigQueryOfflineStore:
    store = BigQueryOfflineStore(
        environment="test",
        project=emulator.project,
        dataset=f"t_{uuid.uuid4().hex[:12]}",
        region="US",
        options={"api_endpoint": emulator.endpoint, "retry_deadline_seconds": 10},
    )
    store.ensure_dataset()
    keys = [name for name, _, _ in KEY_COLUMNS]
    for component, columns in COMPONENTS:
        spec = TableSpec(
            name=f"{component}_features",
            columns=(
                *(Column(name, type_, description, required=True) for name, type_, description in KEY_COLUMNS),
                *(Column(name, rules.DTYPES[dtype].bigquery) for name, dtype, _ in columns),
            ),
        )
        store.create_table(spec)
        assert store.describe()[spec.name].require_partition_filter is True
        path = folder / f"{component}.parquet"
        pq.write_table(tables[component], path)
        dates = sorted(set(pc.cast(tables[component]["ts_minute"], pa.date32()).to_pylist()))
        mapping = {name: name for name in [*keys, *(c for c, _, _ in columns)]}
        counts = store.replace_partitions(spec.name, dates, [str(path)], mapping)
        assert sum(counts.values()) == tables[component].num_rows
    return store


def test_bigquery_store_on_the_emulator_matches_merge_asof(
    bigquery_loaded: BigQueryOfflineStore, entities: pa.Table, tables: dict[str, pa.Table]
) -> None:
    result = bigquery_loaded.point_in_time(entities, FEATURES)
    assert_matches_reference(result, entities, tables)
    # The entity rows' table is dropped afterwards.
    assert sorted(bigquery_loaded.describe()) == ["ca_features", "cb_features"]


def test_bigquery_store_on_the_emulator_reads_batches_of_entity_rows_from_one_query(
    bigquery_loaded: BigQueryOfflineStore, entities: pa.Table, tables: dict[str, pa.Table]
) -> None:
    """The training job's path: one query, its result read a page at a time and cut into batches of entity rows
    (97 rows: batches that do not line up with the pages); together they are the whole result."""
    pages: list[int] = []
    read_pages = bigquery_loaded._pages

    def counted(rows: Any) -> Iterator[Any]:
        for page in read_pages(rows):
            pages.append(page.num_rows)
            yield page

    bigquery_loaded._pages = counted  # type: ignore[method-assign]
    try:
        batches = list(bigquery_loaded.point_in_time_batches(entities, FEATURES, 97))
    finally:
        del bigquery_loaded._pages
    assert len(pages) > 1  # read page by page
    assert sum(pages) == entities.num_rows
    assert [b.num_rows for b in batches] == [min(97, entities.num_rows - i) for i in range(0, entities.num_rows, 97)]
    assert_matches_reference(pa.concat_tables(batches), entities, tables)
    assert sorted(bigquery_loaded.describe()) == ["ca_features", "cb_features"]


def test_rebatched_cuts_and_joins_batches_in_order() -> None:
    parts = [pa.record_batch({"n": list(range(a, b))}) for a, b in ((0, 3), (3, 3), (3, 10), (10, 11))]
    assert [t["n"].to_pylist() for t in rebatched(parts, 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10]]
    assert [t.num_rows for t in rebatched(parts, 11)] == [11]
    assert list(rebatched([], 5)) == []


def test_bigquery_store_on_the_emulator_keeps_pandas_entities_as_given(
    bigquery_loaded: BigQueryOfflineStore, entities: pa.Table, tables: dict[str, pa.Table]
) -> None:
    """A pandas frame (dte with missing values is float there; naive nanosecond timestamps are UTC) gives the
    same features as the Arrow table, and its own columns back unchanged."""
    frame = entities.to_pandas()
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_convert(None).astype("datetime64[ns]")
    [short] = [f for f in FEATURES if f.ttl_seconds == 600]
    result = bigquery_loaded.point_in_time(frame, [short])
    assert result.column_names == [*entities.column_names, short.name]
    assert result["dte"].type == pa.float64()
    assert result[short.name].to_pylist() == reference(entities, tables, [short])[short.name]
    assert 0 < result[short.name].null_count < entities.num_rows


def test_sql_partition_filter_covers_the_largest_ttl() -> None:
    sql = training_sql(
        project="market-regime-test",
        dataset="market_regime_test",
        entity_table="entities",
        features=FEATURES,
        event_range=(dt.datetime(2025, 9, 10, 4, tzinfo=dt.UTC), dt.datetime(2025, 9, 12, 9, tzinfo=dt.UTC)),
    )
    assert "BETWEEN DATE '2025-08-11' AND DATE '2025-09-12'" in sql
    with pytest.raises(ValueError, match="not a valid identifier"):
        training_sql(
            project="market-regime-test",
            dataset="market_regime_test",
            entity_table="entities; DROP TABLE x",
            features=FEATURES,
            event_range=(dt.datetime(2025, 9, 10, tzinfo=dt.UTC), dt.datetime(2025, 9, 12, tzinfo=dt.UTC)),
        )


def test_pandas_entities_with_naive_nanosecond_timestamps(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    frame = entities.to_pandas()
    frame["event_timestamp"] = frame["event_timestamp"].dt.tz_convert(None).astype("datetime64[ns]")
    result = retrieve_point_in_time(frame, FEATURES, ArrowSource(tables))
    expected = retrieve_point_in_time(entities, FEATURES, ArrowSource(tables))
    assert result.select([f.name for f in FEATURES]).equals(expected.select([f.name for f in FEATURES]))


def test_files_of_an_older_catalog_lack_the_new_column(tmp_path: Path) -> None:
    """A feature added after some files were written: null before, values after, on both Parquet readers."""
    old = [("ca", [("atm_straddle_premium", "float64", 48 * HOUR)])]
    new = [("ca", [("atm_straddle_premium", "float64", 48 * HOUR), ("atm_straddle_oi", "int64", 48 * HOUR)])]
    generate_sample_data(tmp_path / "layout", components=old, start=START, days=2)
    generate_sample_data(tmp_path / "layout", components=new, start=dt.date(2025, 8, 13), days=2)
    files = sorted((tmp_path / "layout").rglob("ca.parquet"))
    table = pa.concat_tables([pq.read_table(p) for p in files], promote_options="default")
    features = [
        FeatureRef("premium", "ca", "atm_straddle_premium", 48 * HOUR, "float64"),
        FeatureRef("oi", "ca", "atm_straddle_oi", 48 * HOUR, "int64"),
    ]
    picked = np.random.default_rng(2).integers(0, table.num_rows, 400)
    jitter = pa.array(np.random.default_rng(3).integers(0, 3_600_000_000, 400))
    events = pc.add(pc.cast(table["ts_minute"].take(picked), pa.int64()), jitter)
    entities = pa.table(
        {
            "symbol": table["symbol"].take(picked),
            "dte": table["dte"].take(picked),
            "event_timestamp": events.cast(pa.timestamp("us", tz="UTC")),
        }
    )
    expected = reference(entities, {"ca": table}, features)
    partitions = tmp_path / "partitions"
    partitions.mkdir()
    parts = [pq.read_table(p) for p in files]
    pq.write_table(pa.concat_tables([t for t in parts if t.num_columns == 4]), partitions / "old.parquet")
    pq.write_table(pa.concat_tables([t for t in parts if t.num_columns == 5]), partitions / "new.parquet")
    for source in (
        ParquetLayoutSource(tmp_path / "layout"),
        ParquetLayoutSource(tmp_path / "layout", columns_per_read=1),
        ParquetFilesSource({"ca": [partitions / "old.parquet", partitions / "new.parquet"]}),
        ParquetFilesSource({"ca": [partitions / "old.parquet", partitions / "new.parquet"]}, columns_per_read=1),
    ):
        result = retrieve_point_in_time(entities, features, source)
        assert result["oi"].type == pa.int64()
        for feature in features:
            assert result[feature.name].to_pylist() == expected[feature.name]
        assert 0 < result["oi"].null_count < result.num_rows


def test_component_without_data_gives_typed_nulls(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    features = [
        *FEATURES,
        FeatureRef("gone", "cz", "gone", HOUR, "string"),
        FeatureRef("new", "ca", "new", HOUR, "bool"),
    ]
    result = retrieve_point_in_time(entities, features, ArrowSource(tables))
    assert result["gone"].type == pa.string()
    assert result["gone"].null_count == entities.num_rows
    assert result["new"].type == pa.bool_()
    assert result["new"].null_count == entities.num_rows


def test_empty_and_unusable_entities(tables: dict[str, pa.Table]) -> None:
    empty = pa.table(
        {
            "symbol": pa.array([], pa.string()),
            "dte": pa.array([], pa.int64()),
            "event_timestamp": pa.array([], pa.timestamp("us", tz="UTC")),
        }
    )
    assert retrieve_point_in_time(empty, FEATURES, ArrowSource(tables)).num_rows == 0
    unknown = pa.table({"symbol": ["SENSEX"], "dte": [1], "event_timestamp": [dt.datetime(2025, 8, 12, tzinfo=dt.UTC)]})
    result = retrieve_point_in_time(unknown, FEATURES, ArrowSource(tables))
    assert all(result[f.name].null_count == 1 for f in FEATURES)


def test_bad_requests_are_refused(entities: pa.Table, tables: dict[str, pa.Table]) -> None:
    with pytest.raises(RetrievalError, match="no column event_timestamp"):
        retrieve_point_in_time(entities.drop_columns(["event_timestamp"]), FEATURES, ArrowSource(tables))
    with pytest.raises(RetrievalError, match="clash"):
        retrieve_point_in_time(
            entities, [*FEATURES, FeatureRef("label", "ca", "atr_regime", HOUR)], ArrowSource(tables)
        )
    with pytest.raises(RetrievalError, match="dte must be an integer"):
        retrieve_point_in_time(
            entities.set_column(1, "dte", pa.array(["x"] * entities.num_rows)), FEATURES, ArrowSource(tables)
        )


def test_entity_files_and_result_files(entities: pa.Table, tables: dict[str, pa.Table], tmp_path: Path) -> None:
    csv = tmp_path / "entities.csv"
    csv.write_text(
        "symbol,dte,event_timestamp,label\nNIFTY,1,2025-08-12T05:00:00Z,0.5\nBANKNIFTY,0,2025-08-13 06:30:10.5,1\n"
    )
    loaded = read_entity_file(csv)
    assert loaded["event_timestamp"].to_pylist() == [
        dt.datetime(2025, 8, 12, 5, tzinfo=dt.UTC),
        dt.datetime(2025, 8, 13, 6, 30, 10, 500000, tzinfo=dt.UTC),
    ]
    result = retrieve_point_in_time(entities, FEATURES, ArrowSource(tables))
    out = tmp_path / "training.parquet"
    # Batches in order, one row group each; a later batch whose column has another type (a batch of nulls typed
    # by the catalog) is written in the first batch's types.
    [integer] = [f.name for f in FEATURES if result[f.name].type == pa.int64()][:1]
    narrowed = result.slice(100).set_column(
        result.column_names.index(integer), integer, result.slice(100)[integer].cast(pa.int32())
    )
    assert write_parquet_batches([result.slice(0, 100), narrowed], out, row_group_size=1_000_000) == result.num_rows
    assert pq.ParquetFile(out).metadata.num_row_groups == 2
    assert pq.read_table(out).equals(result)
    assert read_entity_file(out).equals(result)
    with pytest.raises(RetrievalError, match="no result"):
        write_parquet_batches([], tmp_path / "empty.parquet")


def test_feature_refs_from_specs_cover_the_catalog() -> None:
    from django.conf import settings

    from catalog.specs import load_spec_files

    documents = load_spec_files(Path(settings.FCC_SPECS_DIR))
    refs = feature_refs_from_specs(documents)
    assert len(refs) == 932
    assert {r.ttl_seconds for r in refs} == {48 * HOUR, 30 * DAY}
    assert [r.name for r in feature_refs_from_specs(documents, names={"atr_regime"})] == ["atr_regime"]


# --- sample data ----------------------------------------------------------------------------------------------


def _file_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = generate_sample_data(tmp_path / "a", components=COMPONENTS, start=START, days=2, seed=3)
    second = generate_sample_data(tmp_path / "b", components=COMPONENTS, start=START, days=2, seed=3)
    other = generate_sample_data(tmp_path / "c", components=COMPONENTS, start=START, days=2, seed=4)
    assert _file_digests(tmp_path / "a") == _file_digests(tmp_path / "b")
    assert _file_digests(tmp_path / "a") != _file_digests(tmp_path / "c")
    assert (first.files, first.rows, first.bytes) == (second.files, second.rows, second.bytes)
    assert first.files == len(_file_digests(tmp_path / "a")) == other.files
    assert first.bytes == sum(p.stat().st_size for p in (tmp_path / "a").rglob("*.parquet"))


def test_a_new_feature_leaves_the_others_unchanged(tmp_path: Path) -> None:
    base = [("ca", [("atm_straddle_premium", "float64", 48 * HOUR)])]
    more = [("ca", [("atm_straddle_premium", "float64", 48 * HOUR), ("atm_straddle_oi", "int64", 48 * HOUR)])]
    generate_sample_data(tmp_path / "a", components=base, start=START, days=1)
    generate_sample_data(tmp_path / "b", components=more, start=START, days=1)
    a = pq.read_table(tmp_path / "a" / "NIFTY" / "2025" / "08" / "11" / "10" / "ca.parquet")
    b = pq.read_table(tmp_path / "b" / "NIFTY" / "2025" / "08" / "11" / "10" / "ca.parquet")
    assert b.select(a.column_names).equals(a)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerationSummary]:
    root = tmp_path_factory.mktemp("sample")
    summary = generate_sample_data(root, components=COMPONENTS, start=START, days=5, seed=1)
    return root, summary


def test_layout_and_trading_minutes(sample: tuple[Path, GenerationSummary]) -> None:
    root, summary = sample
    days = trading_days(START, 5)
    assert dt.date(2025, 8, 15) not in days
    assert len(days) == 5
    assert summary.days == tuple(days)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.parquet"))
    assert len(files) == summary.files == len(SYMBOLS) * 5 * 7 * 2
    for name in files:
        match = LAYOUT_FILE.match(name)
        assert match, name
        assert match["asset"] in SYMBOLS
        assert match["c"] in {"ca", "cb"}
        assert 9 <= int(match["h"]) <= 15
        day = dt.date(int(match["y"]), int(match["m"]), int(match["d"]))
        assert day in days
        table = pq.read_table(root / name)
        assert table.column_names[:3] == ["symbol", "ts_minute", "dte"]
        assert table.schema.field("ts_minute").type == pa.timestamp("us", tz="UTC")
        local = [t.astimezone(IST) for t in table["ts_minute"].to_pylist()]
        assert {t.date() for t in local} == {day}
        assert {t.hour for t in local} == {int(match["h"])}
        assert all(dt.time(9, 15) <= t.time() <= dt.time(15, 29) and t.second == 0 for t in local)
        assert set(table["symbol"].to_pylist()) == {match["asset"]}
        expected_dte = {(e - day).days for e in weekly_expiries(match["asset"], day, 3)}
        assert set(table["dte"].to_pylist()) == expected_dte


def test_missing_minutes_share(sample: tuple[Path, GenerationSummary]) -> None:
    root, summary = sample
    full = len(SYMBOLS) * 5 * 375 * 3
    for component in ("ca", "cb"):
        rows = summary.rows_per_component[component]
        assert 0.015 < 1 - rows / full < 0.045
        table = pa.concat_tables(pq.read_table(p) for p in root.rglob(f"{component}.parquet"))
        assert table.num_rows == rows
        # A missing minute is missing for every dte of the symbol; the keys are unique.
        per_minute = table.group_by(["symbol", "ts_minute"]).aggregate([("dte", "count")])
        assert set(per_minute["dte_count"].to_pylist()) == {3}
        assert table.group_by(["symbol", "ts_minute", "dte"]).aggregate([]).num_rows == rows
    assert summary.rows == sum(summary.rows_per_component.values())


def test_values_are_plausible(sample: tuple[Path, GenerationSummary]) -> None:
    root, _ = sample
    ca = pa.concat_tables(pq.read_table(p) for p in root.rglob("ca.parquet"))
    cb = pa.concat_tables(pq.read_table(p) for p in root.rglob("cb.parquet"))
    assert pc.min(ca["atm_straddle_premium"]).as_py() > 0
    assert pc.min(ca["atm_straddle_volume"]).as_py() >= 0
    assert set(ca["atr_regime"].to_pylist()) == {"low", "normal", "high"}
    assert set(cb["cpr_type"].to_pylist()) <= {"narrow", "normal", "wide"}
    probability = cb["straddle_mean_reversion_prob_30m"].to_numpy()
    assert ((probability >= 0) & (probability <= 1)).all()
    assert 0.05 < pc.mean(pc.cast(ca["sentiment_class_changed"], pa.float64())).as_py() < 0.5
    assert ca.schema.field("atm_straddle_volume").type == pa.int64()
    assert ca.schema.field("sentiment_class_changed").type == pa.bool_()
    assert cb.schema.field("atm_straddle_oi_weighted_premium").type == pa.decimal128(38, 9)
    # Daily aggregates are constant within a (symbol, day).
    frame = cb.select(["symbol", "ts_minute", "cpr_type", "cpr_width_pct_rank_20d"]).to_pandas()
    frame["day"] = frame["ts_minute"].dt.tz_convert(IST).dt.date
    assert (frame.groupby(["symbol", "day"])[["cpr_type", "cpr_width_pct_rank_20d"]].nunique() == 1).all().all()
    minute = ca.select(["symbol", "ts_minute", "atm_straddle_premium"]).to_pandas()
    minute["day"] = minute["ts_minute"].dt.tz_convert(IST).dt.date
    assert (minute.groupby(["symbol", "day"])["atm_straddle_premium"].nunique() > 100).all()


def test_expiry_calendar() -> None:
    # NIFTY expires on Thursdays, BANKNIFTY on Wednesdays; a holiday moves the expiry a day earlier.
    assert weekly_expiries("NIFTY", dt.date(2025, 8, 11), 3) == [
        dt.date(2025, 8, 14),
        dt.date(2025, 8, 21),
        dt.date(2025, 8, 28),
    ]
    assert weekly_expiries("BANKNIFTY", dt.date(2025, 8, 13), 2) == [dt.date(2025, 8, 13), dt.date(2025, 8, 20)]
    assert weekly_expiries("NIFTY", dt.date(2025, 10, 1), 1) == [dt.date(2025, 10, 1)]  # 2 October is a holiday
    assert dt.date(2025, 10, 2) in HOLIDAYS
    assert not is_trading_day(dt.date(2025, 10, 2))
    monday = dt.datetime(2025, 8, 18, 9, 0, tzinfo=IST)
    assert recent_start(2, monday) == dt.date(2025, 8, 13)  # Friday 15th is a holiday
    # Today's session counts once it has closed (15:30 IST), whatever the clock's zone.
    assert recent_start(1, dt.datetime(2025, 8, 18, 15, 29, 59, tzinfo=IST)) == dt.date(2025, 8, 14)
    assert recent_start(1, dt.datetime(2025, 8, 18, 10, 0, tzinfo=dt.UTC)) == dt.date(2025, 8, 18)
    assert recent_start(2, dt.datetime(2025, 8, 18, 20, 0, tzinfo=dt.UTC)) == dt.date(2025, 8, 14)
    with pytest.raises(ValueError, match="count must be at least 1, not 0"):
        recent_start(0, monday)


def test_whole_catalog_one_day(tmp_path: Path) -> None:
    components = components_from_spec_dir()
    assert sum(len(c.columns) for c in components) == 932
    summary = generate_sample_data(tmp_path, components=components, start=START, days=1, symbols=["NIFTY"])
    assert summary.files == 8 * 7
    schema = pq.read_schema(tmp_path / "NIFTY" / "2025" / "08" / "11" / "12" / "c6.parquet")
    c6 = next(c for c in components if c.component == "c6")
    assert schema.names == ["symbol", "ts_minute", "dte", *(c.column for c in c6.columns)]
    types = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
    assert all(schema.field(c.column).type == types[c.dtype] for c in c6.columns)


def test_management_command(tmp_path: Path) -> None:
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command(
        "generate_sample_data",
        "--root",
        str(tmp_path),
        "--days",
        "1",
        "--start",
        "2025-08-11",
        "--symbols",
        "NIFTY",
        stdout=out,
    )
    assert "wrote 56 files" in out.getvalue()
    assert (tmp_path / "NIFTY" / "2025" / "08" / "11" / "09" / "c1.parquet").exists()


def test_catalog_selectors_match_the_spec_files(loaded: None) -> None:
    from django.conf import settings

    from catalog.models import Environment
    from catalog.specs import load_spec_files
    from provisioning.retrieval import feature_refs_from_catalog
    from provisioning.sample_data import components_from_catalog

    dev = Environment.objects.get(name="dev")
    from_specs = components_from_spec_dir()
    from_catalog = components_from_catalog(dev)
    assert [c.component for c in from_catalog] == [c.component for c in from_specs]
    assert [set(c.columns) for c in from_catalog] == [set(c.columns) for c in from_specs]
    refs = feature_refs_from_catalog(dev)
    assert {(r.name, r.component, r.column, r.ttl_seconds, r.dtype) for r in refs} == {
        (r.name, r.component, r.column, r.ttl_seconds, r.dtype)
        for r in feature_refs_from_specs(load_spec_files(Path(settings.FCC_SPECS_DIR)))
    }
    assert {r.component for r in feature_refs_from_catalog(dev, components={"c8"})} == {"c8"}
    assert [r.name for r in feature_refs_from_catalog(dev, names={"atr_regime"})] == ["atr_regime"]


def test_the_duckdb_store_keeps_at_most_its_scan_limit_of_blocks(tmp_path: Path, monkeypatch: Any) -> None:
    """DuckDB keeps every block of its file it has read until it runs short of memory, beside a result that
    can be larger still; while retrieval reads, the instance's limit is lowered so that it keeps at most that
    many, it drops them after each component, and the limit is put back. A batch that needs more than the
    lowered limit is read under the default one. A limit set by someone else is left alone (and the blocks
    with it)."""
    path = tmp_path / "store.duckdb"
    with duckdb.connect(str(path)) as writer:
        writer.execute("CREATE SCHEMA ds")
        values = ", ".join(f"random() AS f{i}" for i in range(40))
        writer.execute(
            "CREATE TABLE ds.c1_features AS SELECT 'NIFTY' AS symbol, "  # noqa: S608
            "TIMESTAMPTZ '2026-01-05 04:00:00+00' + INTERVAL (i) MINUTE AS ts_minute, 7::BIGINT AS dte, "
            f"{values} FROM range(400000) t(i)"
        )
    features = [FeatureRef(f"f{i}", "c1", f"f{i}", 3600) for i in range(40)]
    start = dt.datetime(2026, 1, 5, 4, 0, 30, tzinfo=dt.UTC)
    stamps = pa.array([start + dt.timedelta(minutes=300 * i) for i in range(1000)], pa.timestamp("us", tz="UTC"))
    entities = pa.table({"symbol": ["NIFTY"] * 1000, "dte": [7] * 1000, "event_timestamp": stamps})

    def held(connection: Any) -> int:
        return int(connection.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0])

    def limit(connection: Any) -> str:
        return str(connection.execute("SELECT current_setting('memory_limit')").fetchone()[0])

    @dataclass
    class Watched(DuckDBSource):
        """Notes what DuckDB holds after each batch of 8 columns it has read."""

        during: list[int] = field(default_factory=list)

        def _batches(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
            for batch in super()._batches(*args, **kwargs):
                self.during.append(held(self.connection.cursor()))
                yield batch

    results = []
    # None: DuckDB's own caching; 48 MB: 192 blocks of 256 KB, more than 2 threads scanning 11 columns need; 1
    # byte: raised to what they need (2 blocks a thread and column: 11 MiB).
    for scan_limit in (None, 48 * 2**20, 1):
        with duckdb.connect(str(path), read_only=True, config={"threads": 2}) as connection:
            before = limit(connection)
            source = Watched(connection, "ds", columns_per_read=8, scan_memory_limit=scan_limit)
            results.append(retrieve_point_in_time(entities, features, source))
            assert limit(connection) == before
            assert len(source.during) == 5
            if scan_limit is None:
                assert max(source.during) > 64 * 2**20  # 400,000 rows of 40 columns, compressed
                assert held(connection) > 64 * 2**20
            else:
                assert max(source.during) <= max(scan_limit, 11 * 2**20)
                assert held(connection) < 2 * 2**20  # a block or a few
    assert results[0].equals(results[1])
    assert results[0].equals(results[2])
    assert results[0]["f3"].null_count == 0
    # Blocks kept for the next call on the connection: at most `keep_bytes` of them, however many were read.
    for keep, least, most in ((24 * 2**20, 8 * 2**20, 25 * 2**20), (2**30, 64 * 2**20, 2**30)):
        with duckdb.connect(str(path), read_only=True, config={"threads": 2}) as connection:
            before = limit(connection)
            source = Watched(connection, "ds", columns_per_read=8, keep_bytes=keep)
            assert retrieve_point_in_time(entities, features, source).equals(results[0])
            assert limit(connection) == before
            assert least < held(connection) <= most
            assert max(source.during) <= max(keep, 48 * 2**20) + 2**20
            assert retrieve_point_in_time(entities, features, source).equals(results[0])
            assert least < held(connection) <= most
    with duckdb.connect(str(path), read_only=True) as connection:
        connection.execute("SET memory_limit = '3GB'")
        before = limit(connection)
        retrieve_point_in_time(entities, features, DuckDBSource(connection, "ds"))
        assert limit(connection) == before
        assert held(connection) > 64 * 2**20
    # A scan that needs more than the lowered limit (here 4 MiB: 16 blocks) is read again under the default.
    monkeypatch.setattr(retrieval, "_SCAN_MEMORY_PER_COLUMN", 1)
    with duckdb.connect(str(path), read_only=True) as connection:
        before = limit(connection)
        assert retrieve_point_in_time(
            entities, features, DuckDBSource(connection, "ds", scan_memory_limit=4 * 2**20)
        ).equals(results[0])
        assert limit(connection) == before
        assert held(connection) > 64 * 2**20


def test_reading_ahead_keeps_one_batch_ahead_and_stops_with_its_caller() -> None:
    """Sources that read are read on a thread of their own while the caller gathers: at most one batch ahead,
    in order, a reader's error raised to the caller, and a caller that stops closes the iterator being read."""
    produced: list[tuple[int, int]] = []
    closed: list[int] = []

    def batches(source: int, count: int) -> Iterator[int]:
        try:
            for number in range(count):
                produced.append((source, number))
                yield number
        finally:
            closed.append(source)

    with retrieval._ReadAhead([lambda: batches(0, 4), lambda: batches(1, 3)]) as sources:
        seen = []
        for position, iterator in enumerate(sources):
            for number in iterator:
                time.sleep(0.02)  # the reader has time to run ahead, if it would
                seen.append((position, number))
                assert len(produced) <= len(seen) + 1
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2)]
    assert closed == [0, 1]

    # Two readers: the second iterator is read while the caller is on the first, one batch ahead of it.
    produced.clear()
    closed.clear()
    with retrieval._ReadAhead(
        [lambda: batches(0, 4), lambda: batches(1, 3), lambda: batches(2, 2)], readers=2
    ) as sources:
        seen = []
        for position, iterator in enumerate(sources):
            for number in iterator:
                time.sleep(0.05)
                seen.append((position, number))
                ahead = [
                    sum(1 for p in produced if p[0] == source) - sum(1 for s in seen if s[0] == source)
                    for source in range(3)
                ]
                assert all(count <= 1 for count in ahead), (seen, produced)
                if position == 0 and number == 1:
                    assert (1, 0) in produced  # read while the caller was on the first iterator
    assert seen == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    assert sorted(closed) == [0, 1, 2]

    def failing() -> Iterator[int]:
        yield 1
        raise RetrievalError("the store went away")

    def read_all(openers: list[Any], stop_at: int | None = None, readers: int = 1) -> None:
        with retrieval._ReadAhead(openers, readers=readers) as sources:
            for iterator in sources:
                for number in iterator:
                    if number == stop_at:
                        raise KeyError(number)

    with pytest.raises(RetrievalError, match="went away"):
        read_all([failing])
    produced.clear()
    closed.clear()
    with pytest.raises(KeyError):
        read_all([lambda: batches(0, 1000)], stop_at=2)
    assert closed == [0]
    assert len(produced) <= 4
    # A caller that stops closes every iterator being read, whichever thread reads it.
    produced.clear()
    closed.clear()
    with pytest.raises(KeyError):
        read_all([lambda: batches(0, 1000), lambda: batches(1, 1000)], stop_at=2, readers=2)
    assert sorted(closed) == [0, 1]
    assert len(produced) <= 5
    with pytest.raises(RetrievalError, match="went away"):
        read_all([lambda: batches(0, 3), failing], readers=2)
