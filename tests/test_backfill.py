"""Backfills on the embedded offline store: checked before writing, idempotent, reconciled, cancellable."""

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.models import Environment, Feature
from provisioning import runner
from provisioning.backends import offline_store_for
from provisioning.backfill import backfill_execute
from provisioning.models import Backfill, ProvisioningRun
from provisioning.offline.duckdb_store import DuckDBOfflineStore

pytestmark = pytest.mark.django_db
ARROW = {"float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(), "string": pa.string()}
DAYS = [dt.date(2026, 11, 23), dt.date(2026, 11, 24)]


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


def write_source(root: Path, component="c8", days=DAYS, assets=("NIFTY", "BANKNIFTY"), mutate=None) -> int:
    """Two hours of minutes per asset and day; returns the rows written."""
    features = list(
        Feature.objects.filter(environment__name="dev", component__key=component).values_list("name", "dtype")
    )
    total = 0
    for day in days:
        for asset in assets:
            for hour in (4, 5):  # UTC hours inside the IST session
                stamps = [dt.datetime(day.year, day.month, day.day, hour, m, 17, tzinfo=dt.UTC) for m in range(60)]
                n = len(stamps)
                columns = {
                    "symbol": pa.array([asset] * n),
                    "ts_minute": pa.array(stamps, pa.timestamp("us", tz="UTC")),
                    "dte": pa.array([3] * n, pa.int64()),
                }
                for i, (name, dtype) in enumerate(features):
                    values = {
                        "float64": [float(i + m) for m in range(n)],
                        "int64": [i + m for m in range(n)],
                        "bool": [m % 2 == 0 for m in range(n)],
                        "string": [f"s{m}" for m in range(n)],
                    }[dtype]
                    columns[name] = pa.array(values, ARROW[dtype])
                if mutate:
                    columns = mutate(columns)
                path = root / asset / f"{day:%Y}" / f"{day:%m}" / f"{day:%d}" / f"{hour + 5:02d}"
                path.mkdir(parents=True, exist_ok=True)
                pq.write_table(pa.table(columns), path / f"{component}.parquet", compression="snappy")
                total += n
    return total


def table_counts(env, table="c8_features"):
    store = offline_store_for(env)
    assert isinstance(store, DuckDBOfflineStore)
    with store.connect(read_only=True) as con:
        query = f"SELECT CAST(ts_minute AS DATE), count(*) FROM market_regime_dev.{table} GROUP BY 1"  # noqa: S608
        return dict(con.execute(query).fetchall())


def request(client, source, **extra):
    body = {"environment": "dev", "source": str(source), "components": ["c8"], **extra}
    return client.post("/api/v1/backfills/", body, format="json")


def test_backfill_loads_reconciles_and_a_rerun_leaves_identical_counts(users, dev, client_for, tmp_path):
    rows = write_source(tmp_path / "src")
    response = request(client_for("carol"), tmp_path / "src")
    assert response.status_code == 201, response.json()
    assert backfill_execute(backfill_id=response.json()["id"], worker="t") == "succeeded"
    assert table_counts(dev) == {DAYS[0]: rows // 2, DAYS[1]: rows // 2}
    detail = client_for("erin").get(f"/api/v1/backfills/{response.json()['id']}/").json()
    assert detail["progress"]["partitions_done"] == detail["progress"]["partitions_total"] == 2
    assert detail["progress"]["rows_loaded"] == rows
    assert {p["status"] for p in detail["partitions"]} == {"done"}
    assert all(p["source_rows"] == p["target_rows"] for p in detail["partitions"])

    again = request(client_for("carol"), tmp_path / "src")
    assert backfill_execute(backfill_id=again.json()["id"], worker="t") == "succeeded"
    assert table_counts(dev) == {DAYS[0]: rows // 2, DAYS[1]: rows // 2}


def test_a_source_with_the_wrong_schema_writes_nothing_and_says_what_is_wrong(users, dev, client_for, tmp_path):
    first, second = (
        Feature.objects.filter(environment=dev, component__key="c8").order_by("id").values_list("name", flat=True)[:2]
    )

    def wrong(columns):
        columns.pop(first)
        columns["not_in_catalog"] = pa.array([1.0] * len(columns["symbol"]))
        columns[second] = pa.array(["x"] * len(columns["symbol"]))
        return columns

    write_source(tmp_path / "bad", mutate=wrong)
    response = request(client_for("carol"), tmp_path / "bad")
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_source"
    rules = {(e["path"], e["rule"]) for e in body["errors"]}
    assert (f"c8.{first}", "missing_column") in rules
    assert ("c8.not_in_catalog", "unknown_column") in rules
    assert (f"c8.{second}", "type_mismatch") in rules
    assert Backfill.objects.count() == 0
    assert table_counts(dev) == {}


def test_cancel_stops_between_jobs_and_leaves_whole_partitions(users, dev, client_for, tmp_path, settings, monkeypatch):
    settings.FCC_BACKFILL_PARTITIONS_PER_JOB = 1
    rows = write_source(tmp_path / "src")
    backfill_id = request(client_for("carol"), tmp_path / "src").json()["id"]
    original = DuckDBOfflineStore.replace_partitions

    def replace_then_cancel(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        client_for("carol").post(f"/api/v1/backfills/{backfill_id}/cancel/")
        return result

    monkeypatch.setattr(DuckDBOfflineStore, "replace_partitions", replace_then_cancel)
    assert backfill_execute(backfill_id=backfill_id, worker="t") == "cancelled"
    assert table_counts(dev) == {DAYS[0]: rows // 2}
    assert Backfill.objects.get(pk=backfill_id).partitions_done == 1


@pytest.mark.parametrize(("hold_seconds", "sessions"), [(60.0, 1), (0.0, 2)])
def test_consecutive_jobs_share_the_open_file_for_a_while_then_give_it_up(
    users, dev, client_for, tmp_path, settings, monkeypatch, hold_seconds, sessions
):
    """Two jobs of a partition each: within the hold time they share one session (one open and one checkpoint of
    the DuckDB file); past it each job opens its own, so other processes get the file in between. Either way the
    file is free once the backfill ends."""
    import subprocess
    import sys

    from provisioning import backfill

    settings.FCC_BACKFILL_PARTITIONS_PER_JOB = 1
    monkeypatch.setattr(backfill, "SESSION_HOLD_SECONDS", hold_seconds)
    opened: list[int] = []
    session = DuckDBOfflineStore.session

    def counted(self):
        opened.append(1)
        return session(self)

    monkeypatch.setattr(DuckDBOfflineStore, "session", counted)
    rows = write_source(tmp_path / "src")
    backfill_id = request(client_for("carol"), tmp_path / "src").json()["id"]
    assert backfill_execute(backfill_id=backfill_id, worker="t") == "succeeded"
    assert len(opened) == sessions
    assert table_counts(dev) == {DAYS[0]: rows // 2, DAYS[1]: rows // 2}
    # Another process can open the file for writing: nothing of the backfill holds it.
    store = offline_store_for(dev)
    assert isinstance(store, DuckDBOfflineStore)
    code = f"import duckdb; duckdb.connect({str(store.path)!r}).close()"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize(("attempts", "outcome"), [(5, "succeeded"), (1, "failed")])
def test_a_job_that_finds_the_file_held_by_another_process_is_tried_again(
    users, dev, client_for, tmp_path, settings, monkeypatch, attempts, outcome
):
    """Another process (a training job) reads the DuckDB file for two seconds, longer than the lock wait: the job
    is tried again after a backoff and loads once the file is free; with no attempt left the backfill fails and
    says why."""
    import subprocess
    import sys

    from provisioning.offline import duckdb_store

    monkeypatch.setattr(duckdb_store, "LOCK_WAIT_SECONDS", 0.3)
    settings.FCC_STEP_MAX_ATTEMPTS = attempts
    settings.FCC_STEP_BACKOFF_SECONDS = 0.5
    rows = write_source(tmp_path / "src")
    backfill_id = request(client_for("carol"), tmp_path / "src").json()["id"]
    store = offline_store_for(dev)
    assert isinstance(store, DuckDBOfflineStore)
    code = (
        "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); print('held', flush=True); "
        "time.sleep(2)"
    )
    with subprocess.Popen([sys.executable, "-c", code, str(store.path)], stdout=subprocess.PIPE, text=True) as reader:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "held"
        assert backfill_execute(backfill_id=backfill_id, worker="t") == outcome
    backfill = Backfill.objects.get(pk=backfill_id)
    if outcome == "succeeded":
        assert table_counts(dev) == {DAYS[0]: rows // 2, DAYS[1]: rows // 2}
    else:
        assert "gave up after 1 attempts: the DuckDB file is locked by another process" in backfill.error
        assert table_counts(dev) == {}


def test_only_reviewers_admins_and_owning_teams_start_backfills(users, dev, client_for, tmp_path):
    write_source(tmp_path / "src")
    assert request(client_for("erin"), tmp_path / "src").status_code == 403
    assert request(client_for("alice"), tmp_path / "src").status_code == 403  # owns c1, not c8
    assert request(client_for("root"), tmp_path / "src").status_code == 201


def test_a_missing_source_is_a_clear_error(users, dev, client_for, tmp_path):
    response = request(client_for("carol"), tmp_path / "nowhere")
    assert response.status_code == 400
    assert response.json()["errors"][0]["path"] == "source"
    assert request(client_for("carol"), "gs://vertex-mr-data/").status_code == 400


def test_a_requested_source_must_lie_under_an_allowed_root(users, dev, client_for, tmp_path, settings):
    rows = write_source(tmp_path / "allowed" / "src")
    outside = tmp_path / "outside"
    write_source(outside)
    (tmp_path / "allowed" / "link").symlink_to(outside, target_is_directory=True)
    settings.FCC_BACKFILL_SOURCE_ROOTS = [str(tmp_path / "allowed")]
    for source in (outside, tmp_path / "allowed" / ".." / "outside", tmp_path / "allowed" / "link"):
        response = request(client_for("carol"), source)
        assert response.status_code == 400, (source, response.json())
        [error] = response.json()["errors"]
        assert (error["path"], error["rule"]) == ("source", "source_root")
        assert "FCC_BACKFILL_SOURCE_ROOTS" in error["detail"]
    assert not Backfill.objects.exists()  # nothing recorded, nothing queued

    response = request(client_for("carol"), tmp_path / "allowed" / "src")
    assert response.status_code == 201, response.json()
    assert backfill_execute(backfill_id=response.json()["id"], worker="t") == "succeeded"
    assert sum(table_counts(dev).values()) == rows

    settings.FCC_BACKFILL_SOURCE_ROOTS = []
    settings.FCC_PARQUET_ROOT = str(tmp_path / "allowed")  # the sample data's root is always allowed
    assert request(client_for("carol"), tmp_path / "allowed" / "src").status_code == 201


def test_load_demo_data_provisions_backfills_every_component_and_syncs_once(loaded, settings, tmp_path):
    """`make run`'s step: sample Parquet generated once, the environment provisioned, one backfill of the eight
    components (each named once), the online store synced; run again, nothing is done twice. The moment is
    given: what the online TTLs still cover depends on it (the sample is the last closed trading sessions)."""
    from io import StringIO

    from django.core.management import call_command

    settings.FCC_PARQUET_ROOT = str(tmp_path / "parquet")
    out = StringIO()
    wednesday_evening = "2026-11-25T18:00:00+05:30"
    call_command("load_demo_data", "--env", "dev", "--days", "1", "--as-of", wednesday_evening, stdout=out)
    backfill = Backfill.objects.get(environment__name="dev", reason="sample data")
    assert backfill.state == Backfill.State.SUCCEEDED, backfill.error
    assert backfill.components == [f"c{n}" for n in range(1, 9)]
    source_rows = {
        component: sum(
            pq.read_metadata(p).num_rows for p in Path(settings.FCC_PARQUET_ROOT).glob(f"*/*/*/*/*/{component}.parquet")
        )
        for component in backfill.components
    }
    # Wednesday's session had closed: the sample is that day.
    assert {
        p.relative_to(settings.FCC_PARQUET_ROOT).parts[1:4]
        for p in Path(settings.FCC_PARQUET_ROOT).glob("*/*/*/*/*/c1.parquet")
    } == {("2026", "11", "25")}
    assert backfill.rows_loaded == sum(source_rows.values()) > 0
    env = Environment.objects.get(name="dev")
    assert {c: sum(table_counts(env, f"{c}_features").values()) for c in backfill.components} == source_rows
    synced = int(out.getvalue().split("online sync: ")[1].split(" rows")[0])
    assert synced > 0
    assert "no online feature value" not in out.getvalue()
    assert "sample data: wrote 224 files" in out.getvalue()  # 4 symbols, 7 hours of one day, 8 components

    # Monday noon: Wednesday's minutes are past every online TTL (48 h). Nothing is generated, loaded or
    # synced again, and the command says why online reads find nothing.
    out = StringIO()
    call_command("load_demo_data", "--env", "dev", "--days", "1", "--as-of", "2026-11-30T12:00:00+05:30", stdout=out)
    assert Backfill.objects.filter(environment=env).count() == 1
    assert {c: sum(table_counts(env, f"{c}_features").values()) for c in backfill.components} == source_rows
    assert "online sync: 0 rows" in out.getvalue()
    assert (
        "no online feature value is newer than 2026-11-28 12:00 +0530 (the longest online TTL, 48h, before "
        "2026-11-30 12:00 +0530)"
    ) in out.getvalue()


def test_load_demo_data_refuses_a_moment_without_offset_and_no_days(loaded):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match=r"--as-of.*'2026-11-25T18:00:00' has no UTC offset"):
        call_command("load_demo_data", "--env", "dev", "--as-of", "2026-11-25T18:00:00")
    with pytest.raises(CommandError, match=r"--days.*'0': at least 1"):
        call_command("load_demo_data", "--env", "dev", "--days", "0")
