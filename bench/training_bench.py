"""A training dataset job's path on the DuckDB offline store: point-in-time features of all 932 features for
`--rows` entity rows, computed and written to Parquet `FCC_TRAINING_ROWS_PER_BATCH` rows at a time
(DuckDBOfflineStore.point_in_time_batches, then write_parquet_batches, as provisioning/training.py runs them),
for several batch sizes; 0 is the whole result computed at once, then written with pyarrow's write_table (the
reference). Each case runs in its own process: `seconds` its wall time, `peak MB` the growth of the process's
peak RSS (VmHWM) over its RSS before the job, `MB` the file written. The data is bench/pit_bench.py's.

    .venv/bin/python bench/training_bench.py [--days 5] [--rows 100000] [--batches 0,65536,32768,16384]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from bench.pit_bench import DATASET, _hwm_mb, _reset_hwm, _rss_mb, load_features, prepare  # noqa: E402
from provisioning.memory import allocator_configure  # noqa: E402
from provisioning.offline.duckdb_store import DuckDBOfflineStore  # noqa: E402
from provisioning.retrieval import write_parquet_batches  # noqa: E402


def run_case(work: Path, rows: int, per_batch: int) -> dict[str, float]:
    allocator_configure()  # as a worker does at start
    features = load_features(work)
    entities = pq.read_table(work / f"entities-{rows}.parquet")
    # The store's file is `{environment}-offline.duckdb` in its folder: pit_bench's file under that name.
    link = work / f"{DATASET}-offline.duckdb"
    if not link.exists():
        link.symlink_to(work / "offline.duckdb")
    store = DuckDBOfflineStore(
        environment=DATASET, project="bench", dataset=DATASET, region="asia-south1", options={"path": str(work)}
    )
    output = work / f"training-{per_batch}.parquet"
    before = _rss_mb()
    _reset_hwm()
    started = time.perf_counter()
    if per_batch:
        written = write_parquet_batches(store.point_in_time_batches(entities, features, per_batch), output)
    else:
        result = store.point_in_time(entities, features)
        pq.write_table(result, output, compression="snappy", row_group_size=65_536)
        written = result.num_rows
        del result
    seconds = time.perf_counter() - started
    assert written == rows
    size = output.stat().st_size
    output.unlink()
    return {"seconds": seconds, "peak_mb": _hwm_mb() - before, "file_mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batches", default="0,65536,32768,16384")
    parser.add_argument("--keep", type=Path, default=None, help="generate into this directory and keep it")
    parser.add_argument("--case", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(args.work, args.rows, args.case)))
        return
    with tempfile.TemporaryDirectory(prefix="training-bench-") as temporary:
        work = args.keep or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        if not (work / f"entities-{args.rows}.parquet").exists() or not (work / "offline.duckdb").exists():
            prepare(work, args.days, [args.rows])
        print(f"training dataset job, DuckDB store, {args.days} trading days, {args.rows:,} entity rows, all features")
        print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
        header = f"{'rows per batch':>14} {'seconds':>8} {'peak MB':>8} {'MB':>6}"
        print(header)
        print("-" * len(header))
        for per_batch in (int(b) for b in args.batches.split(",")):
            output = subprocess.run(
                [sys.executable, __file__, "--case", str(per_batch), "--work", str(work), "--rows", str(args.rows)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            f = json.loads(output.strip().splitlines()[-1])
            label = f"{per_batch:,}" if per_batch else "all at once"
            print(f"{label:>14} {f['seconds']:>8.2f} {f['peak_mb']:>8.0f} {f['file_mb']:>6.0f}")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
