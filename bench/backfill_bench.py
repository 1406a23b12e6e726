"""Backfill throughput against a raw DuckDB Parquet ingest of the same files (target: within 1.5x).

Generates `--days` trading days of sample data (provisioning/sample_data.py) into a temporary directory in the
story's layout, bootstraps a throwaway catalog (SQLite under a temporary DATA_DIR, the dev environment
provisioned from the spec files into its DuckDB offline store), then times, in this process:
- backfill_execute of one backfill of every component into the empty tables (the source checked against the
  catalog, partition by partition, row counts reconciled, progress recorded);
- backfill_execute again over the same files, `--reruns` times (every partition replaced: the idempotent
  rerun);
- the reference: in a fresh DuckDB file, per component, tables of the same shape (the store's own DDL) filled
  by one `INSERT INTO ... SELECT ... FROM read_parquet([...])` of the same files; and, for scale, a bare
  `CREATE TABLE ... AS SELECT * FROM read_parquet([...])`; each ends with a CHECKPOINT (the data in the file,
  as the backfill's closed connections leave it). The reference runs before, between and after the backfills,
  and each backfill is compared with the mean of the reference runs on either side of it (the target's ratio;
  load that drifts during the bench touches both sides); the ratio to the best reference run is shown too. The
  files are in the page cache for every run.

    .venv/bin/python bench/backfill_bench.py [--days 2] [--reruns 2] [--profile]
"""

import argparse
import cProfile
import datetime as dt
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_RATIO = 1.5
START = dt.date(2026, 8, 3)

_scratch = tempfile.TemporaryDirectory(prefix="fcc-backfill-bench-")
os.environ["DATA_DIR"] = _scratch.name
(Path(_scratch.name) / "static").mkdir()  # whitenoise warns about a missing STATIC_ROOT
# catalog_load and backfill_create enqueue tasks on commit; an in-memory broker keeps them in this process.
os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
os.environ.pop("DATABASE_URL", None)  # SQLite under the temporary DATA_DIR
os.environ.pop("FCC_STORES", None)
os.environ["LOG_LEVEL"] = "WARNING"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import django  # noqa: E402

django.setup()

import duckdb  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402

from catalog.models import Component, Environment  # noqa: E402
from catalog.services import catalog_load  # noqa: E402
from provisioning.backends import offline_store_for  # noqa: E402
from provisioning.backfill import backfill_create, backfill_execute  # noqa: E402
from provisioning.models import Backfill, ProvisioningRun  # noqa: E402
from provisioning.offline.duckdb_store import DuckDBOfflineStore  # noqa: E402
from provisioning.parquet_source import source_files  # noqa: E402
from provisioning.runner import run_execute  # noqa: E402
from provisioning.sample_data import components_from_spec_dir, generate_sample_data  # noqa: E402


def bootstrap() -> Environment:
    call_command("migrate", verbosity=0)
    catalog_load(specs_dir=settings.FCC_SPECS_DIR, environment_names=["dev"])
    environment = Environment.objects.get(name="dev")
    for run in ProvisioningRun.objects.filter(environment=environment, state=ProvisioningRun.State.QUEUED).order_by(
        "revision"
    ):
        state = run_execute(run_id=run.pk, worker="backfill-bench")
        if state != ProvisioningRun.State.SUCCEEDED:
            sys.exit(f"provisioning run {run.pk} ended {state}")
    return environment


def timed_backfill(environment: Environment, source: Path, components: list[str], profile: Path | None) -> float:
    backfill = backfill_create(
        user=None,
        environment=environment,
        source=str(source),
        start_date=None,
        end_date=None,
        components=components,
        reason="bench",
    )
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    state = backfill_execute(backfill_id=backfill.pk, worker="backfill-bench")
    if profiler:
        profiler.disable()
    elapsed = time.perf_counter() - started
    if profiler and profile:
        profiler.dump_stats(profile)
    if state != Backfill.State.SUCCEEDED:
        backfill.refresh_from_db()
        sys.exit(f"backfill {backfill.pk} ended {state}: {backfill.error}")
    return elapsed


def reference(
    store: DuckDBOfflineStore, files: dict[str, list[str]], tables: dict[str, str], work: Path, run: int
) -> dict[str, float]:
    """Per component, the store's table DDL replayed in a fresh DuckDB file and one INSERT ... SELECT of the same
    columns from read_parquet over all the files; then, in another fresh file, CREATE TABLE AS SELECT *."""
    with store.connect(read_only=True) as connection:
        ddl = dict(
            connection.execute(
                "SELECT table_name, sql FROM duckdb_tables() WHERE schema_name = ?", [store.dataset]
            ).fetchall()
        )
    seconds: dict[str, float] = {}
    insert_file = work / f"reference-insert-{run}.duckdb"
    ctas_file = work / f"reference-ctas-{run}.duckdb"
    with duckdb.connect(str(insert_file)) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        connection.execute(f'CREATE SCHEMA "{store.dataset}"')
        for table in tables.values():
            connection.execute(ddl[table])
        started = time.perf_counter()
        for component, paths in files.items():
            target = f'"{store.dataset}"."{tables[component]}"'
            names = [d[0] for d in connection.execute("SELECT * FROM read_parquet(?) LIMIT 0", [paths[:1]]).description]
            columns = ", ".join(f'"{n}"' for n in names)
            connection.execute(
                f"INSERT INTO {target} ({columns}) SELECT {columns} FROM read_parquet(?)",  # noqa: S608
                [paths],
            )
        connection.execute("CHECKPOINT")  # the data in the file, as the backfill's connections leave it
        seconds["insert"] = time.perf_counter() - started
    with duckdb.connect(str(ctas_file)) as connection:
        connection.execute("SET TimeZone = 'UTC'")
        started = time.perf_counter()
        for component, paths in files.items():
            connection.execute(f"CREATE TABLE {component} AS SELECT * FROM read_parquet(?)", [paths])  # noqa: S608
        connection.execute("CHECKPOINT")
        seconds["ctas"] = time.perf_counter() - started
    insert_file.unlink()
    ctas_file.unlink()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--reruns", type=int, default=2, help="backfills over the loaded tables after the first")
    parser.add_argument("--profile", action="store_true", help="profile the first backfill; print the top entries")
    args = parser.parse_args()
    work = Path(_scratch.name)
    source = work / "parquet"

    started = time.perf_counter()
    summary = generate_sample_data(source, components=components_from_spec_dir(), start=START, days=args.days)
    generated = time.perf_counter() - started
    environment = bootstrap()
    store = offline_store_for(environment)
    assert isinstance(store, DuckDBOfflineStore)
    components = sorted(
        Component.objects.filter(features__environment=environment).values_list("key", flat=True).distinct()
    )
    tables = {c.key: c.table_name for c in Component.objects.filter(key__in=components)}
    files: dict[str, list[str]] = defaultdict(list)
    for file in source_files(str(source), set(components), None, None):
        files[file.component].append(file.path)
    megabytes = summary.bytes / 1e6
    print(
        f"sample data: {len(summary.days)} trading days, {summary.files} files, {summary.rows:,} rows, "
        f"{megabytes:.0f} MB of Parquet, {len(components)} components, generated in {generated:.1f} s"
    )
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")

    # The references and the backfills alternate, so a change of load on the machine touches both.
    references = [reference(store, files, tables, work, 0)]
    profile = work / "backfill.prof" if args.profile else None
    first = (timed_backfill(environment, source, components, profile), os.getloadavg()[0])
    references.append(reference(store, files, tables, work, 1))
    reruns = []
    for run in range(args.reruns):
        reruns.append((timed_backfill(environment, source, components, None), os.getloadavg()[0]))
        references.append(reference(store, files, tables, work, run + 2))
    with store.connect(read_only=True) as connection:
        loaded = sum(
            connection.execute(f'SELECT count(*) FROM "{store.dataset}"."{t}"').fetchall()[0][0]  # noqa: S608
            for t in tables.values()
        )
    if loaded != summary.rows:
        sys.exit(f"the offline tables hold {loaded:,} rows after the reruns, the files {summary.rows:,}")

    insert = min(r["insert"] for r in references)
    ctas = min(r["ctas"] for r in references)
    # Each backfill against the mean of the reference runs just before and after it: load that drifts during the
    # bench touches both sides of the ratio.
    backfills = [first, *reruns]
    paired = [
        seconds / ((references[i]["insert"] + references[i + 1]["insert"]) / 2)
        for i, (seconds, _) in enumerate(backfills)
    ]
    rerun_ratio = statistics.median(paired[1:]) if reruns else float("nan")
    best_rerun = min(reruns) if reruns else (float("nan"), 0.0)
    header = (
        f"{'run (best of its runs)':<50} {'runs':>4} {'seconds':>8} {'rows/s':>10} {'MB/s':>7} {'vs best ref':>11} "
        f"{'vs adjacent ref':>15} {'load1':>5}"
    )
    print(header)
    print("-" * len(header))
    rows: list[tuple[str, int, float, str, str]] = [
        ("reference: raw DuckDB INSERT ... read_parquet", len(references), insert, "", ""),
        ("raw DuckDB CREATE TABLE AS SELECT * (for scale)", len(references), ctas, "", ""),
        ("backfill_execute, empty tables", 1, first[0], f"{paired[0]:.2f}x", f"{first[1]:.1f}"),
        (
            "backfill_execute, rerun (replaces every partition)",
            len(reruns),
            best_rerun[0],
            f"{rerun_ratio:.2f}x (median)",
            f"{best_rerun[1]:.1f}",
        ),
    ]
    for label, runs, seconds, adjacent, load in rows:
        print(
            f"{label:<50} {runs:>4} {seconds:>8.2f} {summary.rows / seconds:>10,.0f} {megabytes / seconds:>7.1f} "
            f"{seconds / insert:>10.2f}x {adjacent:>15} {load:>5}"
        )
    print(
        "all runs in order, seconds: "
        + ", ".join(
            f"ref {r['insert']:.2f}" + (f", backfill {backfills[i][0]:.2f}" if i < len(backfills) else "")
            for i, r in enumerate(references)
        )
        + f"; {loaded:,} rows in the tables after the reruns, as many as in the files"
    )
    for label, ratio in (("first backfill", paired[0]), ("rerun", rerun_ratio)):
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        print(f"target: {label} within {TARGET_RATIO}x of the raw ingest (adjacent references): {ratio:.2f}x {verdict}")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    if profile:
        print()
        pstats.Stats(str(profile)).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
