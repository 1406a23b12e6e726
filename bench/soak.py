"""Soak: the fault tests run repeatedly, with their figures gathered into one table (`make soak`).

Each scenario is a pytest selection run `repeat` times on PostgreSQL + Redis (the tests start their own Redis,
PostgreSQL cluster and BigQuery emulator where they break one). The tests append one JSON line of figures
per run to $FCC_SOAK_REPORT (tests/faults.py, soak_record); this script prints them per scenario, summed or
ranged, and exits 1 when a run failed. To add a scenario, append to SCENARIOS (a test that calls soak_record
gets its figures printed; one that does not is counted as passed or failed).

    .venv/bin/python bench/soak.py [--only broker-restart] [--repeat 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# The suite's own database (pytest-django makes test_<name>) and a broker database no other target uses.
DATABASE_URL = "postgres://postgres@127.0.0.1:5432/fcc_soak"
BROKER_URL = "redis://127.0.0.1:6379/13"


@dataclass
class Scenario:
    name: str
    tests: list[str]
    repeat: int = 1
    env: dict[str, str] = field(default_factory=dict)


SCENARIOS = [
    Scenario("broker-restart", ["tests/test_broker_restart.py"], repeat=2),
    Scenario("postgres-restart", ["tests/test_database_restart.py::test_postgresql_restarted_under_load"]),
    Scenario("bigquery-flaky", ["tests/test_bigquery_faults.py"], env={"FCC_FAULT_SHARES": "0.1,0.3,0.5"}),
    Scenario("worker-sigkill", ["tests/test_worker_kills.py"], env={"FCC_SOAK_KILLS": "20"}),
    Scenario(
        "api-load",
        ["tests/test_online_load.py"],
        repeat=2,
        env={"FCC_LOAD_TEST_RATE": "1000", "FCC_API_LOAD_RATE": "100", "FCC_LOAD_TEST_SECONDS": "10"},
    ),
]


def run(scenario: Scenario, report: Path, database_url: str, broker_url: str) -> tuple[int, int, float]:
    passed = failed = 0
    started = time.monotonic()
    for _ in range(scenario.repeat):
        with tempfile.TemporaryDirectory(prefix="fcc-soak-") as data_dir:
            env = {
                **os.environ,
                **scenario.env,
                "DATA_DIR": data_dir,
                "DATABASE_URL": database_url,
                "CELERY_BROKER_URL": broker_url,
                "FCC_SOAK_REPORT": str(report),
            }
            command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *scenario.tests]
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
        summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-500:]
        sys.stdout.write(f"  {scenario.name}: {summary}\n")
        sys.stdout.flush()
        if done.returncode == 0:
            passed += 1
        else:
            failed += 1
            sys.stdout.write(done.stdout[-3000:] + "\n")
    return passed, failed, time.monotonic() - started


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    """Figures of one scenario: one line per run, then totals of the integer columns."""
    columns = [key for key in rows[0] if key != "scenario"]
    for row in rows[1:]:
        columns += [key for key in row if key not in columns and key != "scenario"]
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    totals = []
    for c in columns:
        values = [row.get(c) for row in rows]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(rows) > 1:
            totals.append(str(sum(v for v in values if isinstance(v, int))))
        elif all(isinstance(v, int | float) for v in values) and len(rows) > 1:
            numbers = [float(v) for v in values if isinstance(v, int | float)]
            totals.append(f"{_cell(min(numbers))}-{_cell(max(numbers))}")
        else:
            totals.append("")
    widths = [max(len(c), *(len(r[i]) for r in [*cells, totals])) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    if len(rows) > 1:
        lines.append("  ".join(v.ljust(w) for v, w in zip(totals, widths, strict=True)) + "  (total / range)")
    return "\n".join("    " + line for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", help="scenario name (repeatable)")
    parser.add_argument("--repeat", type=int, help="override every scenario's repeat count")
    parser.add_argument("--database-url", default=os.environ.get("SOAK_DATABASE_URL", DATABASE_URL))
    parser.add_argument("--broker-url", default=os.environ.get("SOAK_BROKER_URL", BROKER_URL))
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    with tempfile.TemporaryDirectory(prefix="fcc-soak-report-") as scratch:
        report = Path(scratch) / "figures.jsonl"
        report.touch()
        outcomes = {}
        for scenario in chosen:
            if args.repeat:
                scenario.repeat = args.repeat
            outcomes[scenario.name] = run(scenario, report, args.database_url, args.broker_url)
        figures: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for line in report.read_text().splitlines():
            row = json.loads(line)
            figures[row["scenario"]].append(row)
    sys.stdout.write("\nSoak figures\n")
    sys.stdout.write(f"  {'scenario':<20} {'runs':>5} {'passed':>7} {'failed':>7} {'seconds':>8}\n")
    for name, (passed, failed, seconds) in outcomes.items():
        sys.stdout.write(f"  {name:<20} {passed + failed:>5} {passed:>7} {failed:>7} {seconds:>8.0f}\n")
    for name, rows in figures.items():
        sys.stdout.write(f"\n  {name}\n{table(rows)}\n")
    return 1 if any(failed for _, failed, _ in outcomes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
