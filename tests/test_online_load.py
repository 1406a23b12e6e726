"""Issue 6: the online read endpoint served by gunicorn (as scripts/run-console.sh serves it) under a paced load
generator on loopback, bounded in time and count: no errors. The figures are printed, not asserted (the machine
is shared); bench/online_bench.py measures them against a reference."""

import datetime as dt
import json
import os

import pytest
from django.conf import settings
from django.db import connection

from api.models import ApiToken
from bench.load import Gunicorn, online_read_load
from catalog.entity_ids import entity_id
from catalog.models import Environment, Feature
from provisioning import desired, runner
from provisioning.backends import online_store_for
from provisioning.models import ProvisioningRun
from tests.faults import soak_record

pytestmark = pytest.mark.django_db(transaction=True)
RATE = float(os.environ.get("FCC_LOAD_TEST_RATE", "1000"))  # requests a second offered ...
SECONDS = float(os.environ.get("FCC_LOAD_TEST_SECONDS", "2"))  # ... for this long


def _database_url() -> str:
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def test_the_online_read_answers_a_paced_load_without_errors(users, loaded, isolated_stores, tmp_path, capsys):
    dev = Environment.objects.get(name="dev")
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="t") == "succeeded"
    features = desired.online_view(dev).features
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    rows = [
        (
            entity_id(symbol, now - dt.timedelta(minutes=m), 3),
            now - dt.timedelta(minutes=m),
            {f.name: 1.5 for f in features},
        )
        for m in range(1, 51)
        for symbol in ("NIFTY", "BANKNIFTY")
    ]
    online_store_for(dev).write(rows)
    _, secret = ApiToken.issue(user=users["erin"], name="load")
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        DATABASE_URL=_database_url(),
        FCC_STORES=json.dumps(isolated_stores),
        DATA_DIR=str(settings.DATA_DIR),
        LOG_LEVEL="WARNING",
    )
    with Gunicorn(env=env, log=tmp_path / "gunicorn.log") as server:
        figures = online_read_load(
            server.url,
            secret,
            [r[0] for r in rows],
            [f.name for f in features],
            rate=RATE,
            seconds=SECONDS,
            max_requests=int(RATE * SECONDS),
        )
        log = server.log()
    with capsys.disabled():
        print(f"\nonline read under load (gunicorn {server.command[-4:]}): {figures.line()}")  # noqa: T201 - the report
    soak_record("online-read-load", **{k: v for k, v in figures.as_dict().items() if not isinstance(v, list | dict)})
    assert figures.requests == int(RATE * SECONDS)
    assert figures.errors == 0, (figures.error_samples, figures.statuses, log[-2000:])
    assert figures.statuses == {"200": figures.requests}


API_RATE = float(os.environ.get("FCC_API_LOAD_RATE", "50"))  # about 15 ms of CPU a request, on 2 cores


def test_the_rest_api_answers_a_paced_mixed_load_without_errors(users, loaded, isolated_stores, tmp_path, capsys):
    """The reads a console's users make (feature lists filtered and searched, a feature, components with counts,
    change requests, runs, the audit log, costs) at a paced rate: every answer a 200."""
    from bench.load import LoadRequest, api_load

    _, secret = ApiToken.issue(user=users["erin"], name="load")
    feature = Feature.objects.filter(environment__name="dev").order_by("id").first()
    assert feature is not None
    requests = [
        LoadRequest("GET", "/api/v1/features/?environment=dev&component=c1"),
        LoadRequest("GET", "/api/v1/features/?environment=dev&online=true"),
        LoadRequest("GET", "/api/v1/features/?environment=dev&search=straddle"),
        LoadRequest("GET", f"/api/v1/features/{feature.pk}/"),
        LoadRequest("GET", "/api/v1/components/?environment=dev"),
        LoadRequest("GET", "/api/v1/change-requests/"),
        LoadRequest("GET", "/api/v1/provisioning-runs/"),
        LoadRequest("GET", "/api/v1/audit-log/"),
        LoadRequest("GET", "/api/v1/environments/dev/costs/"),
    ]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        DATABASE_URL=_database_url(),
        DATA_DIR=str(settings.DATA_DIR),
        FCC_STORES=json.dumps(isolated_stores),
        LOG_LEVEL="WARNING",
    )
    with Gunicorn(env=env, log=tmp_path / "gunicorn.log") as server:
        figures = api_load(
            server.url, secret, requests, rate=API_RATE, seconds=SECONDS, max_requests=int(API_RATE * SECONDS)
        )
        log = server.log()
    with capsys.disabled():
        print(f"\nREST API under load (gunicorn {server.command[-4:]}): {figures.line()}")  # noqa: T201 - the report
    soak_record("rest-api-load", **{k: v for k, v in figures.as_dict().items() if not isinstance(v, list | dict)})
    assert figures.requests == int(API_RATE * SECONDS)
    assert figures.errors == 0, (figures.error_samples, figures.statuses, log[-2000:])
    assert figures.statuses == {"200": figures.requests}
