"""p95 of the feature list API with 100,000 features in PostgreSQL (target: under 150 ms).

Creates the database named by DATABASE_URL (default postgres://postgres@127.0.0.1:5432/fcc_bench) when it is
missing, fills `dev` with generated features, times GET /api/v1/features/ in-process with Django's test client
(server-side: the whole WSGI handler, middleware, token auth, filters, pagination and JSON rendering), and as
a same-process reference the page query the view runs, through the ORM. Drops the database at the end
unless --keep is given (a kept, filled database is reused by the next run).

    .venv/bin/python bench/feature_list_bench.py [--features 100000] [--requests 200] [--keep]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 0.150
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/fcc_bench"
VARIANTS = {
    "environment=dev": {},
    "component=c6": {"component": "c6"},
    "online=true": {"online": "true"},
    "search=straddle": {"search": "straddle"},
    "page=1000": {"page": "1000"},
}
# The real catalog's proportions (issue 2): c1 150, c2 98, c3 105, c4 87, c5 94, c6 220, c7 130, c8 48 of 932.
COMPONENT_SHARE = {"c1": 150, "c2": 98, "c3": 105, "c4": 87, "c5": 94, "c6": 220, "c7": 130, "c8": 48}
COMPONENT_WORDS = {
    "c1": ("triple_straddle", "Triple rolling straddle premium"),
    "c2": ("greeks_sentiment", "Greeks sentiment, gamma weighted 1.5"),
    "c3": ("oi_pa_trend", "Open interest and price-action trend"),
    "c4": ("iv_skew_pctile", "Implied-volatility skew percentile"),
    "c5": ("atr_ema_cpr", "ATR, EMA and central pivot range"),
    "c6": ("corr_predictive", "Cross-component correlation, predictive"),
    "c7": ("sr_level", "Support and resistance level strength"),
    "c8": ("master_regime", "Master integration regime score"),
}

_scratch = tempfile.TemporaryDirectory(prefix="fcc-list-bench-")
os.environ["DATA_DIR"] = _scratch.name
(Path(_scratch.name) / "static").mkdir()  # whitenoise warns about a missing STATIC_ROOT
os.environ["CELERY_BROKER_URL"] = "memory://localhost/"
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("DATABASE_URL", DEFAULT_URL)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

_parts = urlsplit(os.environ["DATABASE_URL"])
if not _parts.scheme.startswith("postgres"):
    sys.exit(f"feature_list_bench needs PostgreSQL; DATABASE_URL is {_parts.scheme}://...")
BENCH_DB = _parts.path.lstrip("/")
if "bench" not in BENCH_DB:
    # The bench truncates the feature tables and drops the database: never point it at one with real data.
    sys.exit(
        f"feature_list_bench fills and drops its database; DATABASE_URL must name one with 'bench' in it, "
        f"not {BENCH_DB!r}"
    )
ADMIN_URL = urlunsplit(_parts._replace(path="/postgres"))


def admin_sql(sql: str, *params: Any) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        cursor = conn.execute(sql.encode(), params or None)  # fixed identifiers, not user input
        return cursor.fetchall() if cursor.description else []


if not admin_sql("SELECT 1 FROM pg_database WHERE datname = %s", BENCH_DB):
    admin_sql(f'CREATE DATABASE "{BENCH_DB}"')

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections, transaction  # noqa: E402
from django.test import Client  # noqa: E402

from api.filters import FeatureFilter  # noqa: E402
from api.models import ApiToken  # noqa: E402
from api.views import FeatureViewSet  # noqa: E402
from catalog.models import Component, Environment, Feature, FeatureVersion  # noqa: E402


def generate(total: int) -> None:
    """`total` features in dev over the 8 components, 1 in 29 online (32 of 932 in the real catalog)."""
    env = Environment.objects.get(name="dev")
    components = {c.key: c for c in Component.objects.select_related("owner")}
    weight = sum(COMPONENT_SHARE.values())
    counts = {key: total * share // weight for key, share in COMPONENT_SHARE.items()}
    counts["c6"] += total - sum(counts.values())
    with transaction.atomic():
        with connection.cursor() as cursor:  # immutable rows: the ORM refuses to delete them, TRUNCATE does not
            cursor.execute("TRUNCATE catalog_featureversion, catalog_feature CASCADE")
        serial = 0
        for key, count in counts.items():
            component = components[key]
            stem, text = COMPONENT_WORDS[key]
            batch: list[Feature] = []
            for i in range(count):
                serial += 1
                name = f"{stem}_{i:06d}"
                ttl = 172_800 if i % 5 else 2_592_000
                batch.append(
                    Feature(
                        environment=env,
                        component=component,
                        name=name,
                        dtype=("FLOAT64", "INT64", "BOOL", "STRING")[i % 4 if i % 7 == 0 else 0],
                        description=f"{text}, window {i % 60 + 1} minutes, variant {i}.",
                        ttl_seconds=ttl,
                        online=serial % 29 == 0,
                        source=f"{key}.{stem}.v{i:06d}",
                        tags=[key, "minute" if ttl == 172_800 else "daily"],
                        owner=component.owner,
                        column_name=name,
                    )
                )
            created = Feature.objects.bulk_create(batch, batch_size=5000)
            FeatureVersion.objects.bulk_create(
                [
                    FeatureVersion(
                        feature=f,
                        version=1,
                        dtype=f.dtype,
                        column_name=f.column_name,
                        definition={"name": f.name, "dtype": f.dtype, "source": f.source, "tags": f.tags},
                    )
                    for f in created
                ],
                batch_size=5000,
            )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE catalog_feature; ANALYZE catalog_featureversion")


def timed(fns: list[Callable[[], Any]], count: int, warmup: int) -> list[list[float]]:
    """Times the callables alternately, so a change in machine load hits them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(count):
        for fn, target in zip(fns, samples, strict=True):
            start = time.perf_counter()
            fn()
            target.append(time.perf_counter() - start)
    return samples


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def orm_page(params: dict[str, str], page_size: int) -> Callable[[], list[Feature]]:
    """The page query the list view runs: its queryset, its filters, sliced to the requested page."""
    view = FeatureViewSet(action="list")
    queryset = FeatureFilter(data=params, queryset=view.get_queryset()).qs
    start = (int(params.get("page", "1")) - 1) * page_size
    return lambda: list(queryset[start : start + page_size])


def orm_count(params: dict[str, str]) -> Callable[[], int]:
    queryset = FeatureFilter(data=params, queryset=FeatureViewSet(action="list").get_queryset()).qs
    return lambda: queryset.count()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per variant (default 200)")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the bench database (reused by the next run)")
    args = parser.parse_args()

    call_command("migrate", verbosity=0)
    have = Feature.objects.filter(environment__name="dev").count()
    if have != args.features:
        start = time.perf_counter()
        generate(args.features)
        print(f"generated {args.features} features (+ versions) in {time.perf_counter() - start:.1f} s")
    else:
        print(f"reusing {have} features in {BENCH_DB}")

    user, _ = get_user_model().objects.get_or_create(username="bench-viewer")
    _, secret = ApiToken.issue(user=user, name="bench")
    client = Client(headers={"Authorization": f"Token {secret}"})
    page_size = 50

    rows = []
    variants = dict(VARIANTS)
    last_page = -(-args.features // page_size)
    if last_page < 1000:  # a small --features run: the deepest page there is
        del variants["page=1000"]
        variants[f"page={last_page}"] = {"page": str(last_page)}
    for label, extra in variants.items():
        params = {"environment": "dev", "page_size": str(page_size), **extra}

        def get(params: dict[str, str] = params) -> None:
            response = client.get("/api/v1/features/", params)
            assert response.status_code == 200, response.content[:300]

        body = client.get("/api/v1/features/", params).json()
        api, page = timed([get, orm_page(params, page_size)], args.requests, args.warmup)
        (count,) = timed([orm_count(params)], args.requests // 4, 5)
        rows.append((label, body["count"], len(body["results"]), api, page, count))

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nGET /api/v1/features/?environment=dev&page_size={page_size}&... with {args.features} features, "
        f"PostgreSQL {getattr(connection, 'pg_version', 0) // 10000}; {args.requests} requests per variant after "
        f"{args.warmup} warm-up; in-process test client. Load average: {load}."
    )
    print(
        "ORM page = the view's queryset and filters sliced to the page, list(), timed alternately with the API; "
        "count = its COUNT(*).\n"
    )
    header = (
        f"{'variant':<17} {'matches':>7} {'rows':>4} {'API p50':>8} {'p95':>7} {'p99':>7} "
        f"{'ORM page p50':>12} {'count p50':>9} {'API/ORM':>7}  target"
    )
    print(header)
    print("-" * len(header))
    all_met = True
    for label, matches, returned, api, page, count in rows:
        met = pct(api, 0.95) < TARGET_SECONDS
        all_met = all_met and met
        ratio = statistics.median(api) / statistics.median(page)
        print(
            f"{label:<17} {matches:>7} {returned:>4} {pct(api, 0.5) * 1e3:>8.1f} {pct(api, 0.95) * 1e3:>7.1f} "
            f"{pct(api, 0.99) * 1e3:>7.1f} {statistics.median(page) * 1e3:>12.1f} "
            f"{statistics.median(count) * 1e3:>9.1f} {ratio:>7.1f}  {'met' if met else 'MISSED'}"
        )
    print(f"\n(ms) target: p95 < {TARGET_SECONDS * 1e3:.0f} ms for every variant -> {'met' if all_met else 'MISSED'}")
    return 0


if __name__ == "__main__":
    keep = "--keep" in sys.argv
    try:
        sys.exit(main())
    finally:
        connections.close_all()
        if not keep:
            admin_sql(f'DROP DATABASE IF EXISTS "{BENCH_DB}" WITH (FORCE)')
        _scratch.cleanup()
