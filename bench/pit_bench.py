"""Point-in-time retrieval of all 932 features for 10,000 and 100,000 entity rows, against a plain DuckDB
`ASOF JOIN` over the same Parquet.

Generates `--days` trading days of sample data (provisioning/sample_data.py) into a temporary directory in
the story's layout, then times, for each entity-row count:
- duckdb asof, layout:    DuckDB `ASOF LEFT JOIN` per component over the layout's Parquet, all feature columns,
                          each TTL applied (the reference: ratios are against it);
- fast path, layout:      retrieve_point_in_time reading the layout's Parquet on every call;
- duckdb asof, partitions / fast path, partitions: the same over one Parquet file per component per day (the
                          shape of the offline store's partitions), with its own DuckDB reference;
- duckdb asof, in memory: the same DuckDB join over tables already loaded into DuckDB;
- fast path, in memory:   retrieve_point_in_time over tables already loaded (ArrowSource).
Each case runs in its own process: its time is the best of `--repeat` calls, its peak memory the growth of the
process's peak RSS (VmHWM, reset before the calls) over its RSS before them, so loading the data in memory
is not counted, the result table (about 735 MB for 100,000 rows of 932 columns) is. Then one process runs the
fast path and every DuckDB reference on the same data and counts the cells that differ (must be 0).

    .venv/bin/python bench/pit_bench.py [--days 5] [--rows 10000,100000] [--repeat 3]
"""

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from provisioning.retrieval import (  # noqa: E402
    ArrowSource,
    FeatureRef,
    ParquetFilesSource,
    ParquetLayoutSource,
    event_window,
    retrieve_point_in_time,
)

START = dt.date(2026, 8, 3)
SYMBOLS = ("NIFTY", "BANKNIFTY", "FINNIFTY", "MIDCPNIFTY")
TARGETS = {  # issue 4: seconds (from files, in memory) and peak MB per row count
    10_000: (0.5, 0.1, 500),
    100_000: (1.0, 0.3, 800),
}
CASES = (
    "duckdb asof, layout",
    "fast path, layout",
    "duckdb asof, partitions",
    "fast path, partitions",
    "duckdb asof, in memory",
    "fast path, in memory",
)


# --- data ------------------------------------------------------------------------------------------------------


def prepare(work: Path, days: int, row_counts: list[int]) -> dict[str, Any]:
    from catalog.specs import load_spec_files
    from provisioning.retrieval import feature_refs_from_specs
    from provisioning.sample_data import components_from_specs, generate_sample_data

    documents = load_spec_files(ROOT / "catalog" / "specs")
    started = time.perf_counter()
    summary = generate_sample_data(
        work / "layout", components=components_from_specs(documents), start=START, days=days, seed=20250810
    )
    generated = time.perf_counter() - started
    features = feature_refs_from_specs(documents)
    (work / "features.json").write_text(json.dumps([f.__dict__ for f in features]))
    # The offline store's shape: one file per component per day (a BigQuery partition), keys sorted.
    partitions: dict[str, list[str]] = {}
    for component in sorted({f.component for f in features}):
        table = pa.concat_tables(
            pq.read_table(p) for p in sorted((work / "layout").glob(f"*/*/*/*/*/{component}.parquet"))
        )
        day = pc.strftime(table["ts_minute"], "%Y-%m-%d")
        for value in sorted(pc.unique(day).to_pylist()):
            path = work / "partitions" / component / f"{value}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            part = table.filter(pc.equal(day, value)).sort_by([("symbol", "ascending"), ("dte", "ascending")])
            pq.write_table(part, path, compression="snappy", row_group_size=1 << 20)
            partitions.setdefault(component, []).append(str(path))
    (work / "partitions.json").write_text(json.dumps(partitions))
    # Entity rows: most a few minutes after a real row of a (symbol, dte) that has data, some anywhere in the
    # period (nights, weekends, before the first value), a few of an unknown symbol.
    keys = pa.concat_tables(
        pq.read_table(p, columns=["symbol", "dte", "ts_minute"])
        for p in sorted((work / "layout").glob("*/*/*/*/*/c1.parquet"))
    )
    micros = pc.cast(keys["ts_minute"], pa.int64()).to_numpy()
    rng = np.random.default_rng(4)
    for count in row_counts:
        pick = rng.integers(0, keys.num_rows, count)
        events = micros[pick] + rng.integers(0, 600_000_000, count)
        anywhere = rng.random(count) < 0.2
        events[anywhere] = rng.integers(micros.min() - 86_400_000_000, micros.max() + 86_400_000_000, anywhere.sum())
        symbol = keys["symbol"].take(pa.array(pick)).to_numpy(zero_copy_only=False).astype(object)
        symbol[rng.random(count) < 0.01] = "SENSEX"
        entities = pa.table(
            {
                "symbol": pa.array(symbol, pa.string()),
                "dte": keys["dte"].take(pa.array(pick)),
                "event_timestamp": pa.array(events, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "label": pa.array(rng.normal(size=count)),
            }
        )
        pq.write_table(entities, work / f"entities-{count}.parquet")
    return {"summary": summary, "generated": generated, "features": len(features)}


def load_features(work: Path) -> list[FeatureRef]:
    return [FeatureRef(**f) for f in json.loads((work / "features.json").read_text())]


# --- the DuckDB reference --------------------------------------------------------------------------------------


def duckdb_asof(connection: Any, entities: Any, features: list[FeatureRef], relations: dict[str, str]) -> Any:
    """Plain DuckDB: per component one ASOF LEFT JOIN of the entity rows on (symbol, dte, time), selecting
    every feature column with its TTL applied; the components' results are put side by side by row number."""
    numbered = entities.append_column("entity_row", pa.array(np.arange(entities.num_rows), pa.int64()))
    connection.register("entities", numbered)
    columns = {}
    try:
        by_component: dict[str, list[FeatureRef]] = {}
        for feature in features:
            by_component.setdefault(feature.component, []).append(feature)
        for component, refs in by_component.items():
            select = ", ".join(
                f'CASE WHEN f.ts_minute >= e.event_timestamp - INTERVAL {r.ttl_seconds} SECOND THEN f."{r.column}" '
                f'END AS "{r.name}"'
                for r in refs
            )
            result = connection.sql(
                f"SELECT {select} FROM entities e ASOF LEFT JOIN {relations[component]} f "  # noqa: S608
                "ON e.symbol = f.symbol AND e.dte = f.dte AND e.event_timestamp >= f.ts_minute "
                "ORDER BY e.entity_row"
            ).to_arrow_table()
            for ref in refs:
                columns[ref.name] = result[ref.name]
    finally:
        connection.unregister("entities")
    return pa.Table.from_arrays(
        [*entities.columns, *(columns[f.name] for f in features)],
        names=[*entities.column_names, *(f.name for f in features)],
    )


def layout_relations(work: Path, components: set[str]) -> dict[str, str]:
    return {c: f"read_parquet('{work / 'layout'}/*/*/*/*/*/{c}.parquet')" for c in components}


def partition_relations(work: Path, components: set[str]) -> dict[str, str]:
    return {c: f"read_parquet('{work / 'partitions'}/{c}/*.parquet')" for c in components}


def duckdb_connection() -> Any:
    import duckdb

    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    return connection


# --- one case in its own process -------------------------------------------------------------------------------


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _hwm_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def _reset_hwm() -> None:
    # Writing 5 resets the peak RSS (VmHWM) to the current RSS.
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def run_case(work: Path, case: str, rows: int, repeat: int) -> dict[str, float]:
    features = load_features(work)
    components = {f.component for f in features}
    entities = pq.read_table(work / f"entities-{rows}.parquet")
    window = event_window(entities, features)
    assert window is not None
    call: Any
    if case == "fast path, layout":
        source: Any = ParquetLayoutSource(work / "layout")
        call = lambda: retrieve_point_in_time(entities, features, source)  # noqa: E731
    elif case == "fast path, partitions":
        source = ParquetFilesSource(json.loads((work / "partitions.json").read_text()))
        call = lambda: retrieve_point_in_time(entities, features, source)  # noqa: E731
    elif case == "fast path, in memory":
        loaded = ArrowSource.load(
            ParquetLayoutSource(work / "layout"), features, symbols=set(SYMBOLS), start=window[0], end=window[1]
        )
        call = lambda: retrieve_point_in_time(entities, features, loaded)  # noqa: E731
    else:
        connection = duckdb_connection()
        if case == "duckdb asof, layout":
            relations = layout_relations(work, components)
        elif case == "duckdb asof, partitions":
            relations = partition_relations(work, components)
        else:
            for component, relation in layout_relations(work, components).items():
                connection.execute(f"CREATE TABLE {component} AS SELECT * FROM {relation}")  # noqa: S608
            relations = {c: c for c in components}
        call = lambda: duckdb_asof(connection, entities, features, relations)  # noqa: E731
    best = cpu = float("inf")
    before = _rss_mb()
    _reset_hwm()
    for _ in range(repeat):
        started, started_cpu = time.perf_counter(), time.process_time()
        result = call()
        best = min(best, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
        assert result.num_rows == rows
        del result
        if best > 20:  # a slow reference needs no second figure
            break
    return {"seconds": best, "cpu_seconds": cpu, "peak_mb": _hwm_mb() - before}


def run_in_process(work: Path, case: str, rows: int, repeat: int) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, __file__, "--case", case, "--work", str(work), "--rows", str(rows), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


# --- the mismatch count ------------------------------------------------------------------------------------------


def mismatches(result: Any, reference: Any, features: list[FeatureRef]) -> int:
    count = 0
    for feature in features:
        got, want = result[feature.name], reference[feature.name].cast(result[feature.name].type)
        if got.equals(want):
            continue
        equal = pc.fill_null(pc.equal(got, want), False)
        both_null = pc.and_(got.is_null(), want.is_null())
        count += len(got) - pc.sum(pc.or_(equal, both_null)).as_py()
    return count


def verify(work: Path, rows: int) -> dict[str, int]:
    features = load_features(work)
    components = {f.component for f in features}
    entities = pq.read_table(work / f"entities-{rows}.parquet")
    fast = retrieve_point_in_time(entities, features, ParquetLayoutSource(work / "layout"))
    connection = duckdb_connection()
    found = {}
    for name, relations in (
        ("layout", layout_relations(work, components)),
        ("partitions", partition_relations(work, components)),
    ):
        found[name] = mismatches(fast, duckdb_asof(connection, entities, features, relations), features)
    partitions = ParquetFilesSource(json.loads((work / "partitions.json").read_text()))
    found["fast partitions vs layout"] = mismatches(
        retrieve_point_in_time(entities, features, partitions), fast, features
    )
    window = event_window(entities, features)
    assert window is not None
    loaded = ArrowSource.load(
        ParquetLayoutSource(work / "layout"), features, symbols=set(SYMBOLS), start=window[0], end=window[1]
    )
    found["fast in memory vs layout"] = mismatches(retrieve_point_in_time(entities, features, loaded), fast, features)
    nulls = sum(fast[f.name].null_count for f in features)
    found["null share %"] = round(100 * nulls / (rows * len(features)))
    return found


# --- main -------------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--rows", default="10000,100000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="generate into this directory and keep it")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.work, args.case, int(args.rows), args.repeat)))
        return
    row_counts = [int(r) for r in args.rows.split(",")]
    with tempfile.TemporaryDirectory(prefix="pit-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        prepared = prepare(work, args.days, row_counts)
        summary = prepared["summary"]
        print(
            f"sample data: {len(summary.days)} trading days, {summary.files} files, {summary.rows:,} rows, "
            f"{summary.bytes / 1e6:.0f} MB, {prepared['features']} features, generated in {prepared['generated']:.1f} s"
        )
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
        header = (
            f"{'entity rows':>11}  {'case':<24} {'seconds':>8} {'cpu s':>6} {'peak MB':>8} {'vs same':>8} "
            f"{'vs parquet':>10}  target"
        )
        print(header)
        print("-" * len(header))
        print(
            f"{'':>11}  seconds: best wall time of {args.repeat}; cpu s: CPU time of all threads; vs same: the DuckDB "
            "ASOF JOIN over the same storage\n"
            f"{'':>11}  takes this many times as long; vs parquet: the DuckDB ASOF JOIN over the layout's Parquet does"
        )
        for rows in row_counts:
            files_target, memory_target, peak_target = TARGETS.get(rows, (float("nan"),) * 3)
            figures = {case: run_in_process(work, case, rows, args.repeat) for case in CASES}
            for case in CASES:
                storage = case.split(", ")[1]
                same = figures[f"duckdb asof, {storage}"]["seconds"]
                parquet = figures["duckdb asof, layout"]["seconds"]
                seconds, peak, cpu = figures[case]["seconds"], figures[case]["peak_mb"], figures[case]["cpu_seconds"]
                target = ""
                if case.startswith("fast path"):
                    limit = memory_target if storage == "in memory" else files_target
                    target = f"< {limit} s, < {peak_target} MB"
                    target += "  ok" if seconds < limit and peak < peak_target else "  missed"
                print(
                    f"{rows:>11,}  {case:<24} {seconds:>8.3f} {cpu:>6.2f} {peak:>8.0f} {same / seconds:>7.1f}x "
                    f"{parquet / seconds:>9.1f}x  {target}"
                )
            checks = verify(work, rows)
            print(
                f"{'':>11}  mismatching cells: fast path vs DuckDB asof {checks['layout']} (layout), "
                f"{checks['partitions']} (partitions); fast path partitions and in memory vs layout "
                f"{checks['fast partitions vs layout']}, {checks['fast in memory vs layout']}; "
                f"{checks['null share %']}% of cells null\n"
            )
        print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
