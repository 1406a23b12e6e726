"""The online store interface: one conformance suite for every backend, then what only one backend does.

The vertex backend runs the real google-cloud-aiplatform v1 clients over real local connections (REST over
HTTP, and gRPC for direct writes) against tests/vertex_fake.py; nothing in the client library is mocked.
"""

import json
import marshal
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import hypothesis
import msgpack  # type: ignore[import-untyped]
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from catalog.entity_ids import entity_id
from provisioning import ddl
from provisioning.ddl import online_source_view_sql
from provisioning.errors import PermanentStoreError, TransientStoreError
from provisioning.online.base import (
    OnlineFeature,
    OnlineStore,
    OnlineValue,
    OnlineViewSpec,
    row_merge,
    row_pack,
    unpack_rows,
)
from provisioning.online.local import LocalOnlineStore
from provisioning.online.redis_store import RedisOnlineStore
from provisioning.online.vertex import VertexOnlineStore
from tests.vertex_fake import VertexFake

PROJECT = "arched-bot-269016"
REGION = "us-central1"
ENV = "dev"
VIEW = "instrument_minute_online"
ID_TEMPLATE = "${symbol}_${yyyymmddHHMM}_${dte}"
H48 = 48 * 3600
D30 = 30 * 86400
ATM_IV = OnlineFeature("atm_iv", "float64", H48, "c1")
STRADDLE = OnlineFeature("straddle_premium", "float64", H48, "c1")
GEX = OnlineFeature("gamma_exposure", "float64", D30, "c2")
VWAP = OnlineFeature("vwap_distance", "float64", H48, "c3")
# An hour ago: Redis expires a row at its newest event time plus the longest TTL by the wall clock, so the
# event times written must be recent (a fixed date expired two days after it was written here).
T0 = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
ENTITY = f"NIFTY_{T0:%Y%m%d%H%M}_3"

STORE_NAME = f"projects/{PROJECT}/locations/{REGION}/featureOnlineStores/market_regime_{ENV}"
VIEW_NAME = f"{STORE_NAME}/featureViews/{VIEW}"
GROUP_C1 = f"projects/{PROJECT}/locations/{REGION}/featureGroups/market_regime_{ENV}_c1"


def spec(*features: OnlineFeature, name: str = VIEW, registered: tuple[OnlineFeature, ...] = ()) -> OnlineViewSpec:
    return OnlineViewSpec(
        name=name,
        entity_type="instrument_minute",
        features=features,
        options={"id_template": ID_TEMPLATE},
        registered=registered,
    )


def offline_features(component: str, count: int, ttl: int = D30) -> tuple[OnlineFeature, ...]:
    return tuple(OnlineFeature(f"{component}_f{i:03d}", "float64", ttl, component) for i in range(count))


@pytest.fixture
def fake() -> Iterator[VertexFake]:
    server = VertexFake().start()
    yield server
    server.stop()


def vertex(fake: VertexFake, *, transport: str = "rest", **options: Any) -> VertexOnlineStore:
    endpoint = fake.http_endpoint if transport == "rest" else fake.grpc_endpoint
    return VertexOnlineStore(
        environment=ENV,
        project=PROJECT,
        region=REGION,
        options={
            "api_endpoint": endpoint,
            "transport": transport,
            "operation_timeout_seconds": 10,
            "request_timeout_seconds": 10,
            **options,
        },
    )


def local(tmp_path: Any) -> LocalOnlineStore:
    return LocalOnlineStore(environment=ENV, project=PROJECT, region=REGION, options={"path": str(tmp_path)})


def redis_local(request: pytest.FixtureRequest) -> RedisOnlineStore:
    """The embedded store on Redis (REDIS_URL set): a database of its own, emptied before and after."""
    url = os.environ.get("FCC_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")
    store = RedisOnlineStore(
        environment=f"t{uuid.uuid4().hex[:8]}", project=PROJECT, region=REGION, options={"redis_url": url}
    )
    try:
        store.client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {url}")
    request.addfinalizer(lambda: [store.client.delete(k) for k in store.client.scan_iter(store.prefix + "*")])
    return store


@pytest.fixture(params=["local", "redis", "vertex"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> OnlineStore:
    if request.param == "local":
        return local(tmp_path)
    if request.param == "redis":
        return redis_local(request)
    return vertex(request.getfixturevalue("fake"))


@pytest.fixture(params=["local", "redis", "vertex-grpc"])
def writable(request: pytest.FixtureRequest, tmp_path: Any) -> OnlineStore:
    """Stores that take direct writes: vertex does over gRPC only (FeatureViewDirectWrite is a stream)."""
    if request.param == "local":
        return local(tmp_path)
    if request.param == "redis":
        return redis_local(request)
    return vertex(request.getfixturevalue("fake"), transport="grpc")


def by_name(view: OnlineViewSpec | None) -> dict[str, OnlineFeature]:
    assert view is not None
    return {f.name: f for f in view.features}


# Conformance ---------------------------------------------------------------------------------------------------


def test_describe_is_none_before_anything_exists(store):
    assert store.describe() is None


def test_update_creates_the_online_resources(store):
    outcome = store.update(spec(ATM_IV, STRADDLE, GEX))
    assert outcome.changed is True
    assert outcome.request
    assert set(by_name(store.describe())) == {"atm_iv", "straddle_premium", "gamma_exposure"}


def test_update_again_changes_nothing(store):
    store.update(spec(ATM_IV, STRADDLE, GEX))
    again = store.update(spec(ATM_IV, STRADDLE, GEX))
    assert again.changed is False


def test_describe_returns_what_was_applied(store):
    wanted = spec(ATM_IV, STRADDLE, GEX)
    store.update(wanted)
    live = store.describe()
    assert live is not None
    assert live.name == VIEW
    assert live.entity_type == "instrument_minute"
    assert live.options == {"id_template": ID_TEMPLATE}
    assert by_name(live) == by_name(wanted)


def test_update_with_one_feature_removed_and_one_added_changes_exactly_that(store):
    store.update(spec(ATM_IV, STRADDLE, GEX))
    outcome = store.update(spec(ATM_IV, GEX, VWAP))
    assert outcome.changed is True
    assert by_name(store.describe()) == by_name(spec(ATM_IV, GEX, VWAP))
    assert store.update(spec(ATM_IV, GEX, VWAP)).changed is False


def test_a_ttl_change_is_applied(store):
    store.update(spec(ATM_IV, GEX))
    longer = OnlineFeature("atm_iv", "float64", D30, "c1")
    assert store.update(spec(longer, GEX)).changed is True
    assert by_name(store.describe())["atm_iv"].ttl_seconds == D30


def test_reading_an_unknown_entity_gives_missing_values_never_zero(store):
    store.update(spec(ATM_IV, GEX))
    values = store.read([ENTITY], ["atm_iv", "gamma_exposure"], now=T0)
    assert set(values) == {ENTITY}
    for value in values[ENTITY].values():
        assert value.status == "missing"
        assert value.value is None
        assert value.event_time is None


def test_written_values_read_back_and_older_writes_never_win(writable):
    writable.update(spec(ATM_IV, STRADDLE, GEX))
    writable.write([(ENTITY, T0, {"atm_iv": 0.0, "straddle_premium": 212.5})])
    writable.write([(ENTITY, T0 - timedelta(minutes=5), {"atm_iv": 99.0, "gamma_exposure": -3.5})])
    values = writable.read([ENTITY], ["atm_iv", "straddle_premium", "gamma_exposure"], now=T0)[ENTITY]
    assert (values["atm_iv"].value, values["atm_iv"].status, values["atm_iv"].event_time) == (0.0, "present", T0)
    assert values["straddle_premium"].value == 212.5
    # An older write still fills a feature that had no value.
    assert values["gamma_exposure"].value == -3.5
    assert values["gamma_exposure"].event_time == T0 - timedelta(minutes=5)


def test_newest_write_in_one_batch_wins(writable):
    writable.update(spec(ATM_IV))
    writable.write([(ENTITY, T0, {"atm_iv": 1.0}), (ENTITY, T0 - timedelta(minutes=1), {"atm_iv": 2.0})])
    assert writable.read([ENTITY], ["atm_iv"], now=T0)[ENTITY]["atm_iv"].value == 1.0


def test_a_none_written_reads_as_missing_and_does_not_erase(writable):
    writable.update(spec(ATM_IV, STRADDLE))
    writable.write([(ENTITY, T0, {"atm_iv": 1.0, "straddle_premium": None})])
    writable.write([(ENTITY, T0 + timedelta(minutes=1), {"atm_iv": None})])
    values = writable.read([ENTITY], ["atm_iv", "straddle_premium"], now=T0)[ENTITY]
    assert values["straddle_premium"].status == "missing"
    assert (values["atm_iv"].status, values["atm_iv"].value) == ("present", 1.0)


def test_values_and_event_times_read_back_exactly_with_their_types(writable):
    # 17 significant digits, a sub-millisecond event time and a whole float: Redis's cjson kept 14 digits and
    # turned 3.0 into 3.
    writable.update(spec(ATM_IV, STRADDLE, GEX))
    precise = 25000.123456789012
    at = T0 + timedelta(microseconds=123456)
    writable.write([(ENTITY, at, {"atm_iv": precise, "straddle_premium": 3.0, "gamma_exposure": 0.1 + 0.2})])
    values = writable.read([ENTITY], ["atm_iv", "straddle_premium", "gamma_exposure"], now=T0)[ENTITY]
    assert values["atm_iv"] == (precise, at, "present")
    assert type(values["straddle_premium"].value) is float
    assert values["straddle_premium"].value == 3.0
    assert values["gamma_exposure"].value == 0.30000000000000004


def test_expired_values_are_explicit(writable):
    writable.update(spec(ATM_IV, GEX))
    writable.write([(ENTITY, T0, {"atm_iv": 1.5, "gamma_exposure": 7.0})])
    later = T0 + timedelta(seconds=H48 + 1)
    values = writable.read([ENTITY], ["atm_iv", "gamma_exposure"], now=later)[ENTITY]
    assert (values["atm_iv"].status, values["atm_iv"].value, values["atm_iv"].event_time) == ("expired", None, T0)
    assert (values["gamma_exposure"].status, values["gamma_exposure"].value) == ("present", 7.0)
    at_limit = writable.read([ENTITY], ["atm_iv"], now=T0 + timedelta(seconds=H48))[ENTITY]
    assert at_limit["atm_iv"].status == "present"


# The embedded stores: packing, old rows, merging ---------------------------------------------------------------

NAMES = ("a", "b", "c", "d")
STAMPS = (1000.0, 1500.5, 1900.000001)


@hypothesis.settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(
    entities=st.lists(
        st.dictionaries(
            st.sampled_from(NAMES),
            st.tuples(
                st.one_of(st.floats(allow_nan=False), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.text()),
                st.sampled_from(STAMPS),
            ),
        ),
        max_size=5,
    ),
    ttls=st.dictionaries(st.sampled_from(NAMES), st.sampled_from([0, 100, 500, 1000])),
    asked=st.lists(st.sampled_from(NAMES), min_size=1, unique=True),
    layout_before=st.booleans(),
)
def test_unpacked_rows_say_of_each_value_what_it_is(entities, ttls, asked, layout_before):
    # The fast path (one event time, every feature present, none expired) and the loop agree with the plain rule,
    # on rows of either layout.
    moment = 2000.0
    rows: list[tuple[str, bytes | None]] = [("none", None)]
    for i, values in enumerate(entities):
        row = {name: list(item) for name, item in values.items()} if layout_before else row_pack(values)
        rows.append((f"e{i}", marshal.dumps(row, 4)))
    got = unpack_rows(rows, asked, ttls, moment, marshal.loads)
    assert got["none"] == dict.fromkeys(asked, OnlineValue(None, None, "missing"))
    for i, values in enumerate(entities):
        expected = {}
        for name in asked:
            if name not in values:
                expected[name] = OnlineValue(None, None, "missing")
                continue
            value, stamp = values[name]
            event = datetime.fromtimestamp(stamp, UTC)
            expired = name in ttls and moment - stamp > ttls[name]
            expected[name] = OnlineValue(None, event, "expired") if expired else OnlineValue(value, event, "present")
        assert got[f"e{i}"] == expected
        assert [type(v.value) for v in got[f"e{i}"].values()] == [type(v.value) for v in expected.values()]


def test_a_row_shares_the_event_time_most_values_have():
    row = row_merge(None, [(1.0, {"a": 1, "b": 2}), (2.0, {"c": 3}), (0.5, {"a": 0, "d": None})])
    assert row == (1.0, {"a": 1, "b": 2, "c": 3}, {"c": 2.0})
    assert row_merge(None, [(1.0, {"a": None})]) is None


def test_a_sqlite_row_of_the_layout_before_is_read_and_packed_anew_when_written(tmp_path):
    store = local(tmp_path)
    store.update(spec(ATM_IV, STRADDLE, GEX))
    before = {"atm_iv": [12.5, T0.timestamp()], "straddle_premium": [3.0, (T0 - timedelta(minutes=1)).timestamp()]}
    with store.connect() as connection:
        connection.execute("INSERT INTO online_values VALUES (?, ?)", [ENTITY, marshal.dumps(before, 4)])
    values = store.read([ENTITY], ["atm_iv", "straddle_premium", "gamma_exposure"], now=T0)[ENTITY]
    assert values["atm_iv"] == (12.5, T0, "present")
    assert values["straddle_premium"] == (3.0, T0 - timedelta(minutes=1), "present")
    assert values["gamma_exposure"].status == "missing"

    store.write([(ENTITY, T0 - timedelta(minutes=2), {"atm_iv": 1.0, "gamma_exposure": 4.0})])
    with store.connect() as connection:
        (packed,) = connection.execute("SELECT values_json FROM online_values").fetchone()
    assert marshal.loads(packed) == (  # noqa: S302 - the file this test wrote
        T0.timestamp(),
        {"atm_iv": 12.5, "straddle_premium": 3.0, "gamma_exposure": 4.0},
        {
            "straddle_premium": (T0 - timedelta(minutes=1)).timestamp(),
            "gamma_exposure": (T0 - timedelta(minutes=2)).timestamp(),
        },
    )


def test_a_redis_row_in_json_is_read_and_packed_anew_in_msgpack_when_written(request):
    store = redis_local(request)
    store.update(spec(ATM_IV, STRADDLE, GEX))
    key = store.prefix + "e:" + ENTITY
    # As the Lua merge of before left it: cjson, 14 significant digits, 3.0 as 3.
    store.client.set(key, json.dumps({"atm_iv": [25000.123456789, T0.timestamp()], "straddle_premium": [3, 1.0e9]}))
    values = store.read([ENTITY], ["atm_iv", "straddle_premium", "gamma_exposure"], now=T0)[ENTITY]
    assert values["atm_iv"] == (25000.123456789, T0, "present")
    assert values["straddle_premium"].status == "expired"
    assert values["gamma_exposure"].status == "missing"

    store.write([(ENTITY, T0 - timedelta(minutes=1), {"atm_iv": 1.0, "straddle_premium": 212.5})])
    packed = store.client.get(key)
    assert packed[:1] != b"{"
    assert msgpack.unpackb(packed) == [
        T0.timestamp(),
        {"atm_iv": 25000.123456789, "straddle_premium": 212.5},
        {"straddle_premium": (T0 - timedelta(minutes=1)).timestamp()},
    ]


def test_a_redis_key_expires_with_the_longest_ttl_after_its_newest_value(request):
    store = redis_local(request)
    store.update(spec(ATM_IV, STRADDLE, GEX))
    now = datetime.now(UTC).replace(microsecond=0)
    store.write([(ENTITY, now, {"atm_iv": 1.0})])
    # Older values written later (most of the row's) do not bring the expiry forward.
    store.write([(ENTITY, now - timedelta(hours=1), {"gamma_exposure": 2.0, "straddle_premium": 3.0})])
    assert store.client.expiretime(store.prefix + "e:" + ENTITY) == int(now.timestamp()) + D30


def test_a_redis_key_another_writer_changes_during_a_merge_is_merged_again(request, monkeypatch):
    store = redis_local(request)
    store.update(spec(ATM_IV, STRADDLE))
    other = RedisOnlineStore(environment=store.environment, project=PROJECT, region=REGION, options=store.options)
    store.write([(ENTITY, T0 - timedelta(minutes=2), {"atm_iv": 1.0})])
    mget = redis.client.Pipeline.mget
    reads = []

    def racing(pipe, keys):
        current = mget(pipe, keys)
        reads.append(current)
        if len(reads) == 1:  # between our read and our EXEC, a newer value lands
            other.write([(ENTITY, T0, {"atm_iv": 5.0})])
        return current

    monkeypatch.setattr(redis.client.Pipeline, "mget", racing)
    store.write([(ENTITY, T0 - timedelta(minutes=1), {"atm_iv": 2.0, "straddle_premium": 212.5})])
    assert len(reads) == 3  # ours, the other writer's, ours again
    values = store.read([ENTITY], ["atm_iv", "straddle_premium"], now=T0)[ENTITY]
    assert values["atm_iv"] == (5.0, T0, "present")
    assert values["straddle_premium"].value == 212.5


def test_a_redis_merge_that_keeps_losing_is_a_transient_error(request, monkeypatch):
    store = redis_local(request)
    store.update(spec(ATM_IV))
    mget = redis.client.Pipeline.mget

    def racing(pipe, keys):
        current = mget(pipe, keys)
        store.client.set(keys[0], msgpack.packb(row_merge(None, [(T0.timestamp(), {"atm_iv": 5.0})])))
        return current

    monkeypatch.setattr(redis.client.Pipeline, "mget", racing)
    with pytest.raises(TransientStoreError, match="changed by other writers 10 times"):
        store.write([(ENTITY, T0, {"atm_iv": 1.0})])


# Vertex: IDs, requests, resources -----------------------------------------------------------------------------


def test_a_61_character_view_name_is_refused_before_any_call(fake):
    name = "v" * 61
    with pytest.raises(PermanentStoreError, match=rf"FeatureView ID '{name}' has 61 characters.*at most 60"):
        vertex(fake).update(spec(ATM_IV, name=name))
    assert fake.requests == []


@pytest.mark.parametrize(
    ("environment", "feature", "message"),
    [
        ("dev", "Atm_IV", r"Feature ID 'Atm_IV' breaks the rule \^\[a-z_\]\[a-z0-9_\]\*\$"),
        ("dev", "9lives", r"Feature ID '9lives' breaks the rule"),
        ("dev", "f" * 129, r"Feature ID 'f{129}' has 129 characters; the rule is at most 128"),
        ("prod-eu", "atm_iv", r"FeatureOnlineStore ID 'market_regime_prod-eu' breaks the rule"),
        ("e" * 47, "atm_iv", r"FeatureOnlineStore ID 'market_regime_e{47}' has 61 characters"),
    ],
)
def test_resource_ids_are_validated_before_any_call(fake, environment, feature, message):
    store = VertexOnlineStore(
        environment=environment, project=PROJECT, region=REGION, options={"api_endpoint": fake.http_endpoint}
    )
    with pytest.raises(PermanentStoreError, match=message):
        store.update(spec(OnlineFeature(feature, "float64", H48, "c1")))
    assert fake.requests == []


def test_bad_autoscaling_settings_are_refused_before_any_call(fake, settings):
    settings.FCC_ONLINE_MIN_NODES = 1
    settings.FCC_ONLINE_MAX_NODES = 11
    with pytest.raises(PermanentStoreError, match="min <= max <= 10 x min"):
        vertex(fake).update(spec(ATM_IV))
    assert fake.requests == []


def test_the_online_store_is_created_with_bigtable_autoscaling_2_10_70(fake):
    vertex(fake).update(spec(ATM_IV))
    [create] = fake.calls("CreateFeatureOnlineStore")
    assert create.name == f"projects/{PROJECT}/locations/{REGION}"
    assert create.body["bigtable"]["autoScaling"] == {"minNodeCount": 2, "maxNodeCount": 10, "cpuUtilizationTarget": 70}
    assert "optimized" not in create.body


def test_changed_autoscaling_settings_update_the_store_in_place(fake, settings):
    vertex(fake).update(spec(ATM_IV))
    settings.FCC_ONLINE_MAX_NODES = 12
    outcome = vertex(fake).update(spec(ATM_IV))
    assert outcome.result["updated"] == [f"{STORE_NAME} (bigtable.auto_scaling)"]
    assert fake.get(STORE_NAME)["bigtable"]["autoScaling"]["maxNodeCount"] == 12


def test_feature_groups_register_the_online_source_views_keyed_by_entity_id(fake):
    vertex(fake).update(spec(ATM_IV, STRADDLE, GEX))
    group = fake.get(GROUP_C1)
    assert group["bigQuery"] == {
        "bigQuerySource": {"inputUri": f"bq://{PROJECT}.market_regime_{ENV}.c1_features_online"},
        "entityIdColumns": ["entity_id"],
        "timeSeries": {"timestampColumn": "feature_timestamp"},
    }
    assert group["labels"]["fcc_component"] == "c1"
    feature = fake.get(f"{GROUP_C1}/features/atm_iv")
    assert feature["versionColumnName"] == "atm_iv"
    assert feature["labels"] == {"fcc_dtype": "float64", "fcc_ttl_seconds": str(H48), "fcc_component": "c1"}
    assert {c.name.rsplit("/", 1)[-1] for c in fake.calls("GetFeatureGroup")} == {
        f"market_regime_{ENV}_c1",
        f"market_regime_{ENV}_c2",
    }


def test_the_feature_view_serves_the_groups_features_with_a_cron_sync(fake):
    vertex(fake).update(spec(ATM_IV, STRADDLE, GEX))
    view = fake.get(VIEW_NAME)
    assert view["syncConfig"] == {"cron": "*/15 * * * *"}
    assert view["featureRegistrySource"]["featureGroups"] == [
        {"featureGroupId": f"market_regime_{ENV}_c1", "featureIds": ["atm_iv", "straddle_premium"]},
        {"featureGroupId": f"market_regime_{ENV}_c2", "featureIds": ["gamma_exposure"]},
    ]
    assert view["labels"]["fcc_entity_type"] == "instrument_minute"


def test_a_new_sync_cron_updates_only_the_cron(fake):
    vertex(fake).update(spec(ATM_IV))
    outcome = vertex(fake, sync_cron="CRON_TZ=Asia/Kolkata */5 9-15 * * 1-5").update(spec(ATM_IV))
    assert outcome.result == {"created": [], "updated": [f"{VIEW_NAME} (sync_config.cron)"]}
    assert fake.get(VIEW_NAME)["syncConfig"]["cron"] == "CRON_TZ=Asia/Kolkata */5 9-15 * * 1-5"


def test_a_second_update_only_reads(fake):
    vertex(fake).update(spec(ATM_IV, GEX))
    before = len(fake.requests)
    assert vertex(fake).update(spec(ATM_IV, GEX)).changed is False
    assert {c.method for c in fake.requests[before:]} <= {
        "GetFeatureOnlineStore",
        "GetFeatureGroup",
        "ListFeatures",
        "GetFeatureView",
    }


def test_removing_and_adding_a_feature_touches_only_the_new_feature_and_the_view(fake):
    vertex(fake).update(spec(ATM_IV, STRADDLE, GEX))
    outcome = vertex(fake).update(spec(ATM_IV, GEX, VWAP))
    group_c3 = f"projects/{PROJECT}/locations/{REGION}/featureGroups/market_regime_{ENV}_c3"
    assert outcome.result == {
        "created": [group_c3, f"{group_c3}/features/vwap_distance"],
        "updated": [f"{VIEW_NAME} (feature_registry_source.feature_groups)"],
    }
    # The feature left the view but stays registered over its BigQuery column: nothing is deleted.
    assert fake.get(f"{GROUP_C1}/features/straddle_premium") is not None


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_every_registered_feature_gets_a_feature_in_batches_and_only_online_ones_are_served(fake, transport):
    # c1 has 220 features besides its 2 online ones (3 batches, and 3 pages when listed), c4 only offline ones.
    registered = (*offline_features("c1", 220), *offline_features("c4", 7, H48), ATM_IV, STRADDLE, GEX)
    outcome = vertex(fake, transport=transport).update(spec(ATM_IV, STRADDLE, GEX, registered=registered))
    assert outcome.changed is True
    assert fake.calls("CreateFeature") == []
    batches = fake.calls("BatchCreateFeatures")
    assert {c.transport for c in batches} == {transport}
    assert sorted(len(c.body["requests"]) for c in batches) == [1, 7, 22, 100, 100]
    group_c4 = GROUP_C1.replace("_c1", "_c4")
    for feature in registered:
        group = GROUP_C1 if feature.component == "c1" else group_c4 if feature.component == "c4" else None
        if group is None:
            continue
        live = fake.get(f"{group}/features/{feature.name}")
        assert live is not None, feature.name
        assert live["versionColumnName"] == feature.name
        assert live["labels"] == {
            "fcc_dtype": feature.dtype,
            "fcc_ttl_seconds": str(feature.ttl_seconds),
            "fcc_component": feature.component,
        }
    assert fake.get(group_c4)["bigQuery"]["bigQuerySource"] == {
        "inputUri": f"bq://{PROJECT}.market_regime_{ENV}.c4_features_online"
    }
    # The feature view serves the online features only; c4 has none, so it is not part of the view.
    assert fake.get(VIEW_NAME)["featureRegistrySource"]["featureGroups"] == [
        {"featureGroupId": f"market_regime_{ENV}_c1", "featureIds": ["atm_iv", "straddle_premium"]},
        {"featureGroupId": f"market_regime_{ENV}_c2", "featureIds": ["gamma_exposure"]},
    ]
    store = vertex(fake, transport=transport)
    assert set(by_name(store.describe())) == {"atm_iv", "straddle_premium", "gamma_exposure"}
    live = store.registered_features(["c1", "c2", "c4", "c8"])
    assert live is not None
    assert {c: len(fs) for c, fs in live.items()} == {"c1": 222, "c2": 1, "c4": 7}
    assert live["c4"]["c4_f003"] == OnlineFeature("c4_f003", "float64", H48, "c4")

    before = len(fake.requests)
    again = vertex(fake, transport=transport).update(spec(ATM_IV, STRADDLE, GEX, registered=registered))
    assert again.changed is False
    methods = [c.method for c in fake.requests[before:]]
    assert set(methods) == {"GetFeatureOnlineStore", "GetFeatureGroup", "ListFeatures", "GetFeatureView"}
    # One paged listing per group (c1's 222 features: 3 pages of 100), never one call per feature.
    assert methods.count("ListFeatures") == 3 + 1 + 1


def test_a_feature_registered_meanwhile_is_compared_and_the_rest_created_one_by_one(fake, monkeypatch):
    registered = (*offline_features("c1", 5), ATM_IV)
    original = fake.call

    def racing(method: str, name: str, body: dict[str, Any], transport: str, **args: Any) -> dict[str, Any]:
        if method == "BatchCreateFeatures" and not fake.calls("BatchCreateFeatures"):
            # Another worker registers one of the features between our listing and our batch.
            fake.resources[f"{GROUP_C1}/features/c1_f002"] = {
                "versionColumnName": "c1_f002",
                "labels": {"fcc_dtype": "float64", "fcc_ttl_seconds": str(D30), "fcc_component": "c1"},
            }
        return original(method, name, body, transport, **args)

    monkeypatch.setattr(fake, "call", racing)
    outcome = vertex(fake).update(spec(ATM_IV, registered=registered))
    assert len(fake.calls("BatchCreateFeatures")) == 1
    # The batch is refused as a whole (409); the one that exists is compared, the other five created.
    assert len(fake.calls("CreateFeature")) == 5
    created = sorted(n.rsplit("/", 1)[-1] for n in outcome.result["created"] if "/features/" in n)
    assert created == ["atm_iv", "c1_f000", "c1_f001", "c1_f003", "c1_f004"]
    for feature in registered:
        assert fake.get(f"{GROUP_C1}/features/{feature.name}") is not None
    assert vertex(fake).update(spec(ATM_IV, registered=registered)).changed is False


def test_a_registered_feature_with_a_bad_id_is_refused_before_any_call(fake):
    bad = OnlineFeature("Vix-Level", "float64", H48, "c8")
    with pytest.raises(PermanentStoreError, match=r"Feature ID 'Vix-Level' breaks the rule"):
        vertex(fake).update(spec(ATM_IV, registered=(ATM_IV, bad)))
    assert fake.requests == []


def test_a_served_feature_registered_differently_is_refused_before_any_call(fake):
    other = OnlineFeature("atm_iv", "float64", D30, "c1")
    with pytest.raises(PermanentStoreError, match="one feature, one definition"):
        vertex(fake).update(spec(ATM_IV, registered=(other,)))
    assert fake.requests == []


def test_labels_someone_else_added_are_kept_and_ours_restored(fake):
    vertex(fake).update(spec(ATM_IV))
    feature = fake.resources[f"{GROUP_C1}/features/atm_iv"]
    feature["labels"] = {"fcc_dtype": "float64", "fcc_ttl_seconds": "60", "owner": "quant"}
    outcome = vertex(fake).update(spec(ATM_IV))
    assert outcome.result["updated"] == [f"{GROUP_C1}/features/atm_iv (labels)"]
    assert fake.get(f"{GROUP_C1}/features/atm_iv")["labels"] == {
        "fcc_dtype": "float64",
        "fcc_ttl_seconds": str(H48),
        "fcc_component": "c1",
        "owner": "quant",
    }


def test_a_group_over_another_source_stops_for_a_person(fake):
    vertex(fake).update(spec(ATM_IV))
    fake.resources[GROUP_C1]["bigQuery"]["bigQuerySource"]["inputUri"] = f"bq://{PROJECT}.market_regime_dev.c1_features"
    with pytest.raises(PermanentStoreError, match="source is immutable"):
        vertex(fake).update(spec(ATM_IV))


def test_a_resource_created_concurrently_is_compared_not_an_error(fake):
    vertex(fake).update(spec(ATM_IV))
    # Another worker created the store between our get (404) and our create (409).
    fake.fail(404, method="GetFeatureOnlineStore")
    outcome = vertex(fake).update(spec(ATM_IV))
    assert outcome.changed is False
    assert len(fake.calls("CreateFeatureOnlineStore")) == 2


def test_describe_uses_ids_although_vertex_answers_with_the_project_number(fake):
    vertex(fake).update(spec(ATM_IV))
    listed = fake.call("ListFeatureViews", STORE_NAME, {}, "test", collection="featureViews")
    assert listed["featureViews"][0]["name"].startswith(f"projects/{fake.project_number}/")
    live = vertex(fake).describe()
    assert live.name == VIEW
    assert [f.component for f in live.features] == ["c1"]


# Vertex: reads and writes ---------------------------------------------------------------------------------------


def test_fetch_feature_values_maps_present_missing_and_expired(fake):
    store = vertex(fake)
    store.update(spec(ATM_IV, STRADDLE, GEX))
    fake.serve(VIEW_NAME, ENTITY, {"atm_iv": (0.0, T0), "gamma_exposure": (4.25, T0 - timedelta(days=31))})
    values = store.read([ENTITY, f"BANKNIFTY_{T0:%Y%m%d%H%M}_3"], ["atm_iv", "straddle_premium", "gamma_exposure"], T0)
    assert values[ENTITY]["atm_iv"].status == "present"
    assert values[ENTITY]["atm_iv"].value == 0.0
    assert values[ENTITY]["atm_iv"].event_time == T0
    # The view returns an empty value for a feature the entity has none of: missing, not zero.
    assert (values[ENTITY]["straddle_premium"].status, values[ENTITY]["straddle_premium"].value) == ("missing", None)
    assert values[ENTITY]["gamma_exposure"].status == "expired"
    # Bigtable online serving answers NOT_FOUND for an entity it does not hold.
    assert {v.status for v in values[f"BANKNIFTY_{T0:%Y%m%d%H%M}_3"].values()} == {"missing"}
    [fetch, *_] = fake.calls("FetchFeatureValues")
    assert fetch.body["dataKey"] == {"key": ENTITY}
    assert fetch.name == VIEW_NAME


def test_reading_before_the_view_exists_says_what_to_do(fake):
    with pytest.raises(PermanentStoreError, match="apply update_online_store first"):
        vertex(fake).read([ENTITY], ["atm_iv"])


def test_direct_writes_go_over_grpc_with_the_event_time(fake):
    store = vertex(fake, transport="grpc")
    store.update(spec(ATM_IV))
    assert store.write([(ENTITY, T0, {"atm_iv": 3})]) == 1
    [write] = fake.calls("FeatureViewDirectWrite")
    assert write.transport == "grpc"
    assert write.body["featureView"] == VIEW_NAME
    [item] = write.body["dataKeyAndFeatureValues"]
    assert item["dataKey"] == {"key": ENTITY}
    assert item["features"] == [
        {"name": "atm_iv", "value": {"doubleValue": 3.0, "metadata": {"generateTime": f"{T0:%Y-%m-%dT%H:%M:%SZ}"}}}
    ]


def test_writes_over_rest_explain_that_direct_write_needs_grpc(fake):
    store = vertex(fake)
    store.update(spec(ATM_IV))
    with pytest.raises(PermanentStoreError, match="bidirectional gRPC stream") as raised:
        store.write([(ENTITY, T0, {"atm_iv": 1.0})])
    assert "cron sync" in str(raised.value)
    assert fake.calls("FeatureViewDirectWrite") == []


def test_writing_a_feature_the_view_does_not_serve_is_refused(fake):
    store = vertex(fake, transport="grpc")
    store.update(spec(ATM_IV))
    with pytest.raises(PermanentStoreError, match="not served by the feature view"):
        store.write([(ENTITY, T0, {"vwap_distance": 1.0})])


# Vertex: errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_503_is_transient(fake, transport):
    fake.fail(503)
    with pytest.raises(TransientStoreError, match="currently unavailable"):
        vertex(fake, transport=transport).update(spec(ATM_IV))
    # The rerun resumes: nothing was created, the next attempt creates everything.
    assert vertex(fake, transport=transport).update(spec(ATM_IV)).changed is True


def test_a_429_is_transient(fake):
    store = vertex(fake)
    store.update(spec(ATM_IV))
    fake.fail(429, method="FetchFeatureValues")
    with pytest.raises(TransientStoreError, match="Quota exceeded"):
        store.read([ENTITY], ["atm_iv"])


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_a_403_is_permanent_and_names_the_role(fake, transport):
    fake.fail(403, method="CreateFeatureGroup")
    with pytest.raises(PermanentStoreError, match=r"roles/aiplatform\.user") as raised:
        vertex(fake, transport=transport).update(spec(ATM_IV))
    assert "aiplatform.featureGroups.create" in str(raised.value)
    assert raised.value.action == "grant roles/aiplatform.user"


def test_other_errors_are_permanent_with_the_service_message(fake):
    fake.fail(400, method="CreateFeatureView", message="Feature view sync config is invalid.")
    with pytest.raises(PermanentStoreError, match="Feature view sync config is invalid"):
        vertex(fake).update(spec(ATM_IV))


def test_a_long_running_operation_is_waited_for_with_a_bound(fake):
    fake.pending_operations = True
    started = time.monotonic()
    with pytest.raises(TransientStoreError, match=r"still running after 0\.5 s"):
        vertex(fake, operation_timeout_seconds=0.5).update(spec(ATM_IV))
    assert time.monotonic() - started < 10
    assert fake.calls("GetOperation")


def test_an_unreachable_endpoint_is_transient():
    store = VertexOnlineStore(
        environment=ENV,
        project=PROJECT,
        region=REGION,
        options={"api_endpoint": "http://127.0.0.1:9", "transport": "rest", "request_timeout_seconds": 2},
    )
    with pytest.raises(TransientStoreError, match="cannot reach"):
        store.describe()


# Vertex: options -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"endpoint": "x"}, r"unknown vertex online_options \['endpoint'\]"),
        ({"sync_cron": "every 15 minutes"}, "not a cron schedule"),
        ({"transport": "http"}, "must be 'grpc' or 'rest'"),
        ({"operation_timeout_seconds": 0}, "must be a positive number"),
        ({"operation_timeout_seconds": "60"}, "must be a positive number"),
    ],
)
def test_options_are_typed_and_unknown_keys_refused(options, message):
    with pytest.raises(PermanentStoreError, match=message):
        VertexOnlineStore(environment=ENV, project=PROJECT, region=REGION, options=options)


def test_view_options_the_backend_cannot_honour_are_refused(fake):
    other = OnlineViewSpec(VIEW, "instrument_minute", (ATM_IV,), {"id_template": "${symbol}:${dte}"})
    with pytest.raises(PermanentStoreError, match="forms entity ids as"):
        vertex(fake).update(other)
    assert fake.requests == []


# The online source view ------------------------------------------------------------------------------------------


def test_the_online_source_view_forms_the_catalog_entity_id_and_keeps_the_ttl_window():
    sql = online_source_view_sql(PROJECT, "market_regime_dev", "c1", [("atm_iv__v2", "atm_iv")], H48)
    assert "FORMAT_TIMESTAMP('%Y%m%d%H%M', `ts_minute`, 'Asia/Kolkata')" in sql  # the catalog's id is in IST
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute("CREATE SCHEMA market_regime_dev")
    connection.execute(
        "CREATE TABLE market_regime_dev.c1_features "
        "(symbol VARCHAR, ts_minute TIMESTAMPTZ, dte BIGINT, atm_iv__v2 DOUBLE)"
    )
    recent = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=1)
    connection.execute(
        "INSERT INTO market_regime_dev.c1_features VALUES (?, ?, 3, 1.5), (?, ?, 3, 2.5)",
        ["NIFTY", recent, "NIFTY", recent - timedelta(days=3)],
    )
    for statement in ddl.to_duckdb(sql):
        connection.execute(statement)
    rows = connection.execute("SELECT * FROM market_regime_dev.c1_features_online").fetchall()
    assert rows == [(entity_id("NIFTY", recent, 3), recent, 1.5)]
