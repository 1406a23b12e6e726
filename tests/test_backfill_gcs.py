"""Backfills from a gs:// source on the BigQuery backend, over real connections: the source is listed and its
Parquet footers checked through pyarrow's GcsFileSystem against a local Cloud Storage emulator
(tests/gcs_emulator.py), and the BigQuery backend's load jobs, run by the real client against the BigQuery
emulator (tests/bigquery_emulator.py), read the same objects by their gs:// URIs."""

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pytest
from django.conf import settings

from catalog.models import Component, Environment
from provisioning import desired
from provisioning.backends import offline_store_for
from provisioning.backfill import backfill_execute
from provisioning.models import Backfill
from provisioning.offline.bigquery_store import BigQueryOfflineStore
from provisioning.parquet_source import gcs_filesystem
from tests.bigquery_emulator import Emulator, require_emulator_venv, running_emulator
from tests.gcs_emulator import GcsEmulator, running_gcs_emulator
from tests.test_backfill import DAYS, write_source

pytestmark = pytest.mark.django_db


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    with running_gcs_emulator(tmp_path_factory.mktemp("gcs")) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def bigquery_server(gcs_server: GcsEmulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    venv = require_emulator_venv()
    workdir = tmp_path_factory.mktemp("bigquery-emulator")
    # The project of the environments (FCC_GCP_PROJECT), which the emulator is told to serve.
    with running_emulator(venv, workdir, settings.FCC_GCP_PROJECT, gcs_local_root=gcs_server.storage_root) as bq:
        yield bq


@pytest.fixture
def gcs(gcs_server: GcsEmulator, monkeypatch: pytest.MonkeyPatch) -> GcsEmulator:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint)
    return gcs_server


@pytest.fixture
def bigquery_dev(
    loaded: None, gcs: GcsEmulator, bigquery_server: Emulator, settings: Any, isolated_stores: Any
) -> Environment:
    """dev on the BigQuery emulator, with a new c8 table provisioned as the runner provisions it."""
    dev = Environment.objects.get(name="dev")
    assert dev.gcp_project == bigquery_server.project
    settings.FCC_STORES = {
        **settings.FCC_STORES,
        "dev": {
            **settings.FCC_STORES["dev"],
            "offline": "bigquery",
            "offline_options": {"api_endpoint": bigquery_server.endpoint, "retry_deadline_seconds": 10},
        },
    }
    store = offline_store_for(dev)
    assert isinstance(store, BigQueryOfflineStore)
    store.ensure_dataset()
    store.client.delete_table(f"{dev.gcp_project}.{dev.bigquery_dataset}.c8_features", not_found_ok=True)
    store.create_table(desired.component_table(dev, Component.objects.get(key="c8")))
    return dev


def upload(local: Path, gcs: GcsEmulator, prefix: str) -> str:
    """Copies a local source folder into the bucket over the emulator's HTTP API; returns its gs:// URI."""
    filesystem = gcs_filesystem()
    for path in sorted(local.rglob("*.parquet")):
        with filesystem.open_output_stream(f"{gcs.bucket}/{prefix}/{path.relative_to(local).as_posix()}") as out:
            out.write(path.read_bytes())
    return f"gs://{gcs.bucket}/{prefix}"


def request(client: Any, source: str) -> Any:
    body = {"environment": "dev", "source": source, "components": ["c8"]}
    return client.post("/api/v1/backfills/", body, format="json")


def test_a_backfill_from_gs_is_checked_loaded_and_reconciled(users, bigquery_dev, gcs, tmp_path, client_for):
    dev = bigquery_dev
    rows = write_source(tmp_path / "src")
    source = upload(tmp_path / "src", gcs, "history/v1")
    objects = gcs_filesystem().get_file_info(pafs.FileSelector(f"{gcs.bucket}/history/v1", recursive=True))
    files = [o for o in objects if o.type == pafs.FileType.File]
    assert len(files) == 8

    response = request(client_for("carol"), source)
    assert response.status_code == 201, response.json()
    backfill_id = response.json()["id"]
    assert backfill_execute(backfill_id=backfill_id, worker="t") == "succeeded"
    backfill = Backfill.objects.get(pk=backfill_id)
    assert (backfill.partitions_total, backfill.partitions_done, backfill.rows_loaded) == (2, 2, rows)
    # Bytes come from the bucket's listing.
    assert backfill.bytes_loaded == sum(o.size for o in files)
    store = offline_store_for(dev)
    counts = store.partition_row_counts("c8_features", DAYS)
    assert counts == dict.fromkeys(DAYS, rows // 2)
    table = f"`{dev.gcp_project}.{dev.bigquery_dataset}.c8_features`"
    loaded = store.query(
        f"SELECT symbol, ts_minute FROM {table} WHERE DATE(ts_minute) = DATE '{DAYS[0].isoformat()}' "  # noqa: S608
        "ORDER BY ts_minute, symbol LIMIT 1"
    )
    assert loaded == [("BANKNIFTY", dt.datetime(2026, 11, 23, 4, 0, 17, tzinfo=dt.UTC))]

    # A rerun replaces the partitions: the same counts, not twice the rows.
    again = request(client_for("carol"), source).json()["id"]
    assert backfill_execute(backfill_id=again, worker="t") == "succeeded"
    assert store.partition_row_counts("c8_features", DAYS) == counts


def test_a_gs_source_with_the_wrong_schema_is_refused_naming_the_object(users, bigquery_dev, gcs, tmp_path, client_for):
    def drop_first_feature(columns):
        return {k: v for i, (k, v) in enumerate(columns.items()) if i != 3}

    write_source(tmp_path / "bad", mutate=drop_first_feature)
    source = upload(tmp_path / "bad", gcs, "history/bad")
    response = request(client_for("carol"), source)
    assert response.status_code == 400
    [problem] = response.json()["errors"]
    assert problem["rule"] == "missing_column"
    assert f"gs://{gcs.bucket}/history/bad/" in problem["detail"]
    assert Backfill.objects.count() == 0


def test_a_gs_prefix_without_objects_is_a_clear_error(users, bigquery_dev, gcs, client_for):
    response = request(client_for("carol"), f"gs://{gcs.bucket}/nothing-here")
    assert response.status_code == 400
    assert response.json()["errors"][0]["rule"] == "unreadable_source"
    assert "holds no objects" in response.json()["errors"][0]["detail"]
