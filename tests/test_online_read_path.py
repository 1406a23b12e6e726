"""The fast paths of online reads behave as the plain ones: the embedded store's packing (marshal, older files in
JSON and WITHOUT ROWID), the hand-checked request shape, and the token and environment checked at every read."""

import datetime as dt
import json
import sqlite3

import pytest
from django.db.models import F
from django.utils import timezone

from api.views_online import plain_read
from catalog.entity_ids import entity_id
from catalog.models import Environment, Feature
from provisioning import runner
from provisioning.backends import online_store_for
from provisioning.models import ProvisioningRun
from provisioning.online.local import LocalOnlineStore

T0 = dt.datetime(2026, 11, 27, 4, 0, tzinfo=dt.UTC)
ENTITY = entity_id("NIFTY", T0, 3)


class Money(float):
    """A float subclass (as numpy.float64 is): marshal cannot pack it, JSON can."""


def store(tmp_path):
    return LocalOnlineStore(environment="dev", project="p", region="r", options={"path": str(tmp_path)})


def test_a_file_of_before_json_rows_without_rowid_is_read_and_rebuilt_once(tmp_path):
    path = tmp_path / "dev.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE online_values (entity_id TEXT PRIMARY KEY, values_json TEXT NOT NULL) WITHOUT ROWID;"
    )
    old.execute(
        "INSERT INTO online_values VALUES (?, ?)",
        [ENTITY, json.dumps({"atm_iv": [12.5, T0.timestamp()], "regime": ["ranging", T0.timestamp()]})],
    )
    old.commit()
    old.close()

    values = store(tmp_path).read([ENTITY, "NIFTY_202611270931_3"], ["atm_iv", "regime", "vwap"], now=T0)
    assert values[ENTITY]["atm_iv"] == (12.5, T0, "present")
    assert values[ENTITY]["regime"].value == "ranging"
    assert values[ENTITY]["vwap"].status == "missing"
    assert {v.status for v in values["NIFTY_202611270931_3"].values()} == {"missing"}
    check = sqlite3.connect(path)
    (sql,) = check.execute("SELECT sql FROM sqlite_master WHERE name = 'online_values'").fetchone()
    assert "WITHOUT ROWID" not in sql.upper()

    # A write merges into the JSON row (older values never win) and packs it anew.
    store(tmp_path).write(
        [(ENTITY, T0 - dt.timedelta(minutes=1), {"atm_iv": 1.0}), (ENTITY, T0, {"vwap": 3.25, "regime": None})]
    )
    (packed,) = check.execute("SELECT values_json FROM online_values WHERE entity_id = ?", [ENTITY]).fetchone()
    assert isinstance(packed, bytes)
    values = store(tmp_path).read([ENTITY], ["atm_iv", "regime", "vwap"], now=T0)[ENTITY]
    assert (values["atm_iv"].value, values["regime"].value, values["vwap"].value) == (12.5, "ranging", 3.25)


def test_values_marshal_cannot_pack_are_kept_as_json(tmp_path):
    store(tmp_path).write([(ENTITY, T0, {"atm_iv": Money(2.5), "flag": True, "count": 7})])
    values = store(tmp_path).read([ENTITY], ["atm_iv", "flag", "count"], now=T0)[ENTITY]
    assert [(v.value, v.status) for v in values.values()] == [(2.5, "present"), (True, "present"), (7, "present")]


def test_many_keys_with_repeats_and_unknowns_read_in_order(tmp_path):
    ids = [entity_id("NIFTY", T0 - dt.timedelta(minutes=m), 3) for m in range(150)]
    store(tmp_path).write([(e, T0, {"atm_iv": float(i)}) for i, e in enumerate(ids)])
    asked = [*ids[:120], ids[3], "BANKNIFTY_202611270930_1"]
    values = store(tmp_path).read(asked, ["atm_iv"], now=T0)
    assert list(values) == list(dict.fromkeys(asked))
    assert values[ids[119]]["atm_iv"].value == 119.0
    assert values["BANKNIFTY_202611270930_1"]["atm_iv"].status == "missing"


@pytest.mark.parametrize(
    ("body", "plain"),
    [
        ({"environment": "dev", "entity_ids": [ENTITY], "features": ["atm_iv"]}, True),
        ({"environment": "dev", "entity_ids": [ENTITY], "features": ["atm_iv"], "entities": []}, True),
        ({"environment": "dev", "entity_ids": [f" {ENTITY}"], "features": ["atm_iv"]}, False),  # trimmed
        ({"environment": "dev", "entity_ids": [ENTITY + "\n"], "features": ["atm_iv"]}, False),
        ({"environment": "dev", "entity_ids": [ENTITY], "features": ["atm iv"]}, False),
        ({"environment": "dev", "entity_ids": [ENTITY], "features": []}, False),
        ({"environment": "dev", "entity_ids": [ENTITY], "features": [7]}, False),
        ({"environment": "qa", "entity_ids": [ENTITY], "features": ["atm_iv"]}, False),
        ({"environment": "dev", "entity_ids": None, "features": ["atm_iv"]}, False),
        ({"environment": "dev", "entities": [{"symbol": "NIFTY"}], "features": ["atm_iv"]}, False),
        ([], False),
    ],
)
def test_only_requests_the_serializer_takes_as_they_are_skip_it(body, plain):
    assert (plain_read(body) is not None) is plain


@pytest.fixture
def dev(loaded, isolated_stores):
    env = Environment.objects.get(name="dev")
    run = ProvisioningRun.objects.get(environment=env, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="t") == "succeeded"
    return env


def read(client, features, ids=(ENTITY,)):
    body = {"environment": "dev", "entity_ids": list(ids), "features": features}
    return client.post("/api/v1/online-features/", body, format="json")


@pytest.mark.django_db
def test_both_request_paths_answer_alike(users, dev, client_for):
    name = Feature.objects.filter(environment=dev, online=True).order_by("name").first().name
    now = timezone.now().replace(second=0, microsecond=0)
    online_store_for(dev).write([(entity_id("NIFTY", now, 3), now, {name: 4.5})])
    erin = client_for("erin")
    plain = read(erin, [name], [entity_id("NIFTY", now, 3)])
    trimmed = read(erin, [name], [f" {entity_id('NIFTY', now, 3)} "])
    assert plain.status_code == trimmed.status_code == 200
    assert plain.json() == trimmed.json()
    assert plain.json()["results"][0]["values"][name] == {
        "value": 4.5,
        "event_time": now.isoformat(),
        "status": "present",
    }
    assert plain["Content-Type"] == trimmed["Content-Type"] == "application/json"
    unknown = read(erin, [name], ["NIFTY_2026-11-27_3"])
    assert unknown.status_code == 400
    assert unknown.json()["errors"][0]["path"] == "entity_ids[0]"
    missing_env = erin.post(
        "/api/v1/online-features/", {"environment": "qa", "entity_ids": [ENTITY], "features": [name]}, format="json"
    )
    assert missing_env.status_code == 400
    assert missing_env.json()["errors"][0]["path"] == "environment"


@pytest.mark.django_db
def test_a_revoked_token_or_a_deactivated_user_is_refused_on_the_next_read(users, dev, client_for):
    name = Feature.objects.filter(environment=dev, online=True).first().name
    erin = client_for("erin")
    assert read(erin, [name]).status_code == 200
    assert read(erin, [name]).status_code == 200  # the token's row cached, unchanged
    users["erin"].api_tokens.update(revoked_at=timezone.now())
    assert read(erin, [name]).status_code == 401

    dave = client_for("dave")
    assert read(dave, [name]).status_code == 200
    type(users["dave"]).objects.filter(pk=users["dave"].pk).update(is_active=False)
    assert read(dave, [name]).status_code == 401


@pytest.mark.django_db
def test_a_moved_revision_shows_on_the_next_read(users, dev, client_for):
    offline = Feature.objects.filter(environment=dev, online=False).order_by("name").first()
    erin = client_for("erin")
    assert read(erin, [offline.name]).status_code == 400  # not online
    Feature.objects.filter(pk=offline.pk).update(online=True)
    Environment.objects.filter(pk=dev.pk).update(revision=F("revision") + 1, updated_at=timezone.now())
    answer = read(erin, [offline.name])
    assert answer.status_code == 200, answer.json()
    assert answer.json()["results"][0]["values"][offline.name]["status"] == "missing"
