"""Server-side time to validate and plan the full 932-feature catalog (target: under 0.3 s).

Runs on a throwaway database: a SQLite file in a temporary directory, or, when DATABASE_URL names a
PostgreSQL server, a database `<name>_plan_bench` on that server, created here and dropped at the end.
The reference is jsonschema-only validation of the same payload in the same process.

    .venv/bin/python bench/plan_bench.py [--repeat 30]
"""

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 0.3
_scratch = tempfile.TemporaryDirectory(prefix="fcc-plan-bench-")
os.environ["DATA_DIR"] = _scratch.name
(Path(_scratch.name) / "static").mkdir()  # whitenoise warns about a missing STATIC_ROOT
# catalog_load enqueues a provisioning task on commit; an in-memory broker keeps it in this process.
os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


@dataclass
class Timing:
    samples: list[float]
    reference: list[float]  # interleaved with the samples


_pg_admin_url: str | None = None
_pg_bench_db: str | None = None
if os.environ.get("DATABASE_URL", "").startswith(("postgres://", "postgresql://")):
    parts = urlsplit(os.environ["DATABASE_URL"])
    _pg_bench_db = f"{parts.path.lstrip('/') or 'fcc'}_plan_bench"
    _pg_admin_url = urlunsplit(parts._replace(path="/postgres"))
    os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{_pg_bench_db}"))
else:
    os.environ.pop("DATABASE_URL", None)  # SQLite under the temporary DATA_DIR


def _pg_admin(sql: str) -> None:
    import psycopg

    assert _pg_admin_url is not None
    with psycopg.connect(_pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.encode())  # identifiers below are fixed, not user input


if _pg_bench_db:
    _pg_admin(f'DROP DATABASE IF EXISTS "{_pg_bench_db}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{_pg_bench_db}"')

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.test import Client  # noqa: E402

from api.models import ApiToken  # noqa: E402
from catalog import services  # noqa: E402
from catalog.models import Environment  # noqa: E402
from catalog.specs import _validator, load_spec_files  # noqa: E402


def measure(fn: Callable[[], Any], reference: Callable[[], Any], repeat: int, warmup: int = 2) -> Timing:
    """Times `fn` and the reference alternately, so a change in machine load hits both alike."""
    for _ in range(warmup):
        fn()
        reference()
    timing = Timing([], [])
    for _ in range(repeat):
        for target, call in ((timing.samples, fn), (timing.reference, reference)):
            start = time.perf_counter()
            call()
            target.append(time.perf_counter() - start)
    return timing


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def one_feature_changed(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    changed = copy.deepcopy(documents)
    feature = changed[0]["features"][0]
    feature["description"] = feature.get("description", "") + " (benchmark edit)"
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30, help="timed repetitions per case (default 30)")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    documents = load_spec_files(Path(settings.FCC_SPECS_DIR))
    count = sum(len(d["features"]) for d in documents)
    changed = one_feature_changed(documents)
    empty_env = Environment.objects.get(name="staging")

    def reference() -> None:
        list(_validator.iter_errors({"specs": documents}))

    # (a) against an empty environment: every feature is a create.
    plan_a = services.change_request_plan(environment=empty_env, payload={"specs": documents}).plan
    cases: list[tuple[str, Timing, str]] = [
        (
            "(a) plan vs empty env",
            measure(
                lambda: services.change_request_plan(environment=empty_env, payload={"specs": documents}),
                reference,
                args.repeat,
            ),
            f"{plan_a['summary']['create']} creates",
        )
    ]

    services.catalog_load(specs_dir=Path(settings.FCC_SPECS_DIR), environment_names=["dev"])
    dev = Environment.objects.get(name="dev")
    plan_b = services.change_request_plan(environment=dev, payload={"specs": documents}).plan
    plan_c = services.change_request_plan(environment=dev, payload={"specs": changed}).plan
    assert plan_b["is_empty"], "the loaded environment should already match the spec files"
    assert len(plan_c["changes"]) == 1, plan_c["summary"]
    cases.append(
        (
            "(b) plan vs loaded env, no changes",
            measure(
                lambda: services.change_request_plan(environment=dev, payload={"specs": documents}),
                reference,
                args.repeat,
            ),
            "empty plan",
        )
    )
    cases.append(
        (
            "(c) plan vs loaded env, 1 changed",
            measure(
                lambda: services.change_request_plan(environment=dev, payload={"specs": changed}),
                reference,
                args.repeat,
            ),
            f"1 {plan_c['changes'][0]['action']}",
        )
    )

    # (d) the whole request as CI sends it: JSON parsing, auth, the view, plan text and rendering.
    user = get_user_model().objects.create_user(username="bench-registrar")
    _, secret = ApiToken.issue(user=user, name="bench")
    client = Client(headers={"Authorization": f"Token {secret}"})
    body = json.dumps({"environment": "dev", "specs": changed})

    def post_plan() -> None:
        response = client.post("/api/v1/change-requests/plan/", body, content_type="application/json")
        assert response.status_code == 200, response.content[:500]

    cases.append(
        (
            "(d) POST /change-requests/plan/, 1 changed",
            measure(post_plan, reference, args.repeat),
            f"{len(body) // 1024} KiB body",
        )
    )

    pooled = [r for _, timing, _ in cases for r in timing.reference]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nValidate + plan the full catalog: {count} features in {len(documents)} specs, {connection.vendor}.")
    print(f"{args.repeat} repetitions per case, each interleaved with the reference (jsonschema-only validation of")
    print(f"the same payload); x ref = median(case) / median(its interleaved reference). Load average: {load}.\n")
    header = f"{'case':<44} {'median ms':>10} {'p95 ms':>8} {'min ms':>8} {'x ref':>6}  {'target':<7} note"
    print(header)
    print("-" * len(header))
    row = "{:<44} {:>10.1f} {:>8.1f} {:>8.1f} {:>6}  {:<7} {}"
    ref_name = "reference: jsonschema iter_errors (pooled)"
    print(row.format(ref_name, statistics.median(pooled) * 1e3, p95(pooled) * 1e3, min(pooled) * 1e3, "1.0", "", ""))
    all_met = True
    for name, timing, note in cases:
        samples = timing.samples
        met = p95(samples) < TARGET_SECONDS
        all_met = all_met and met
        ratio = f"{statistics.median(samples) / statistics.median(timing.reference):.2f}"
        median, tail, best = statistics.median(samples) * 1e3, p95(samples) * 1e3, min(samples) * 1e3
        print(row.format(name, median, tail, best, ratio, "met" if met else "MISSED", note))
    print(f"\ntarget: p95 < {TARGET_SECONDS * 1e3:.0f} ms per case -> {'met' if all_met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        connections.close_all()
        if _pg_bench_db:
            _pg_admin(f'DROP DATABASE IF EXISTS "{_pg_bench_db}" WITH (FORCE)')
        _scratch.cleanup()
