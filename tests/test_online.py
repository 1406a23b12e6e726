"""Online sync from the offline tables and online reads, on the embedded stores."""

import datetime as dt
from collections.abc import Callable

import pytest
from django.utils import timezone

from catalog.entity_ids import entity_id, entity_parts
from catalog.models import Environment, Feature
from provisioning import runner
from provisioning.backends import offline_store_for, online_store_for
from provisioning.models import ProvisioningRun
from provisioning.offline.duckdb_store import DuckDBOfflineStore
from provisioning.online_sync import online_sync

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def stores(isolated_stores, settings):
    return isolated_stores


@pytest.fixture
def dev(loaded):
    env = Environment.objects.get(name="dev")
    assert (
        runner.run_execute(run_id=ProvisioningRun.objects.get(environment=env, revision=1).pk, worker="t")
        == "succeeded"
    )
    return env


def c8_online(env):
    return list(
        Feature.objects.filter(environment=env, component__key="c8", online=True)
        .order_by("name")
        .values_list("name", "dtype")
    )


def insert_c8(env, minutes):
    """One NIFTY row (dte 3) per given minute, online features filled with the minute's ordinal."""
    features = c8_online(env)
    store = offline_store_for(env)
    assert isinstance(store, DuckDBOfflineStore)
    literal: dict[str, Callable[[int], str]] = {
        "float64": lambda i: f"{i}.5",
        "int64": str,
        "bool": lambda i: "TRUE",
        "string": lambda i: f"'r{i}'",
    }
    names = ", ".join(n for n, _ in features)
    with store.connect() as con:
        for i, minute in enumerate(minutes, start=1):
            values = ", ".join(literal[d](i) for _, d in features)
            con.execute(
                f"INSERT INTO market_regime_dev.c8_features (symbol, ts_minute, dte, {names}) "  # noqa: S608
                f"VALUES ('NIFTY', TIMESTAMPTZ '{minute.isoformat()}', 3, {values})"
            )
    return features


def test_entity_ids_round_trip_in_ist():
    ts = dt.datetime(2026, 11, 27, 3, 45, tzinfo=dt.UTC)
    assert entity_id("NIFTY", ts, 3) == "NIFTY_202611270915_3"
    assert entity_parts("NIFTY_202611270915_3") == ("NIFTY", ts, 3)
    with pytest.raises(ValueError, match="not an instrument_minute id"):
        entity_parts("NIFTY_2026-11-27_3")


def test_sync_writes_recent_rows_incrementally_and_reads_are_explicit(users, dev, client_for):
    now = timezone.now().replace(second=0, microsecond=0)
    old, recent = now - dt.timedelta(hours=60), now - dt.timedelta(minutes=30)
    features = insert_c8(dev, [old, recent])
    assert online_sync(environment=dev, now=now)["c8"] == 1  # the 60 h old row is past the 48 h TTL
    assert set(online_sync(environment=dev, now=now).values()) == {0}  # incremental: nothing new

    names = [n for n, _ in features]
    response = client_for("erin").post(
        "/api/v1/online-features/",
        {
            "environment": "dev",
            "entity_ids": [entity_id("NIFTY", recent, 3), entity_id("NIFTY", old, 3)],
            "features": names,
        },
        format="json",
    )
    assert response.status_code == 200, response.json()
    fresh, stale = response.json()["results"]
    assert {v["status"] for v in fresh["values"].values()} == {"present"}
    assert fresh["values"][names[0]]["event_time"] is not None
    assert {v["status"] for v in stale["values"].values()} == {"missing"}
    assert all(v["value"] is None for v in stale["values"].values())

    by_parts = client_for("erin").post(
        "/api/v1/online-features/",
        {
            "environment": "dev",
            "entities": [{"symbol": "NIFTY", "ts_minute": recent.isoformat(), "dte": 3}],
            "features": names[:1],
        },
        format="json",
    )
    assert by_parts.json()["results"][0]["entity_id"] == entity_id("NIFTY", recent, 3)

    later = online_store_for(dev).read([entity_id("NIFTY", recent, 3)], names, now=now + dt.timedelta(hours=49))
    assert {v.status for v in later[entity_id("NIFTY", recent, 3)].values()} == {"expired"}

    newer = now - dt.timedelta(minutes=5)
    insert_c8(dev, [newer])
    assert online_sync(environment=dev, now=now)["c8"] == 1


def test_bad_reads_name_the_field_and_the_rule(users, dev, client_for):
    offline_only = Feature.objects.filter(environment=dev, online=False).first().name
    response = client_for("erin").post(
        "/api/v1/online-features/",
        {"environment": "dev", "entity_ids": ["nifty_1_2", "NIFTY_202611270915_3"], "features": [offline_only]},
        format="json",
    )
    assert response.status_code == 400
    errors = {(e["path"], e["rule"]) for e in response.json()["errors"]}
    assert ("entity_ids[0]", "entity_id") in errors
    assert ("features[0]", "not_online") in errors
    assert client_for(None).post("/api/v1/online-features/", {}, format="json").status_code == 401
