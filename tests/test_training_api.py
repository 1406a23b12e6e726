"""A training dataset requested through the API equals an independent point-in-time reference, cell for cell."""

import datetime as dt
import io
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from catalog.models import Feature
from provisioning.backfill import backfill_execute
from provisioning.models import TrainingDataset
from provisioning.training import training_dataset_execute
from tests.test_backfill import DAYS, dev, request, stores, write_source  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db


def reference(entities: pd.DataFrame, source: pd.DataFrame, features: list[tuple[str, int]]) -> pd.DataFrame:
    """pandas merge_asof, backward, by symbol and dte, with each feature's TTL as the tolerance."""
    left = entities.reset_index().rename(columns={"index": "row"}).sort_values("event_timestamp")
    right = source.sort_values("ts_minute")
    out = entities.copy()
    for name, ttl in features:
        merged = pd.merge_asof(
            left,
            right[["symbol", "dte", "ts_minute", name]],
            left_on="event_timestamp",
            right_on="ts_minute",
            by=["symbol", "dte"],
            direction="backward",
            tolerance=pd.Timedelta(seconds=ttl),
        ).set_index("row")
        out[name] = merged[name].reindex(out.index)
    return out


@pytest.mark.parametrize("rows_per_batch", [4, 65_536])
def test_a_training_dataset_through_the_api_matches_merge_asof(
    users,
    dev,  # noqa: F811
    client_for,
    tmp_path,
    settings,
    rows_per_batch,
):
    """Computed and written a batch of entity rows at a time (4 rows: two batches, one row group each) or at once."""
    from catalog.models import AuditLogEntry

    settings.FCC_TRAINING_ROWS_PER_BATCH = rows_per_batch
    write_source(tmp_path / "src")
    backfill_id = request(client_for("carol"), tmp_path / "src").json()["id"]
    assert backfill_execute(backfill_id=backfill_id, worker="t") == "succeeded"

    day = DAYS[1]
    stamps = [
        dt.datetime(day.year, day.month, day.day, 4, 0, 3, tzinfo=dt.UTC),  # before the minute's value (at :17)
        dt.datetime(day.year, day.month, day.day, 4, 10, 17, tzinfo=dt.UTC),  # exactly on a value
        dt.datetime(day.year, day.month, day.day, 5, 30, 45, tzinfo=dt.UTC),  # between values
        dt.datetime(day.year, day.month, day.day, 9, 0, 0, tzinfo=dt.UTC),  # hours after the last value
        dt.datetime(day.year + 1, 1, 5, 4, 0, 0, tzinfo=dt.UTC),  # beyond every TTL
    ]
    entities = pd.DataFrame(
        {
            "symbol": ["NIFTY", "NIFTY", "BANKNIFTY", "NIFTY", "NIFTY", "FINNIFTY"],
            "dte": [3, 3, 3, 3, 3, 3],
            "event_timestamp": [*stamps, stamps[1]],
            "label": [1, 0, 1, 1, 0, 1],
        }
    )
    buffer = io.BytesIO()
    entities.to_csv(buffer, index=False)
    buffer.seek(0)
    buffer.name = "entities.csv"
    response = client_for("erin").post(
        "/api/v1/training-datasets/",
        {"environment": "dev", "entities": buffer, "components": ["c8"]},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    dataset_id = response.json()["id"]
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "succeeded"
    detail = client_for("erin").get(f"/api/v1/training-datasets/{dataset_id}/").json()
    assert detail["state"] == "succeeded"
    assert detail["result_rows"] == len(entities)

    download = client_for("erin").get(f"/api/v1/training-datasets/{dataset_id}/result/")
    assert download.status_code == 200
    content = b"".join(download.streaming_content)
    assert pq.ParquetFile(io.BytesIO(content)).metadata.num_row_groups == (2 if rows_per_batch == 4 else 1)
    result = pq.read_table(io.BytesIO(content)).to_pandas()
    actions = AuditLogEntry.objects.filter(object_type="training_dataset", object_id=str(dataset_id))
    assert list(actions.order_by("id").values_list("action", flat=True)) == [
        "training_dataset.request",
        "training_dataset.claim",
        "training_dataset.succeeded",
    ]
    # Nothing but the result is left in the folder (each batch went to a temporary file first).
    folder = Path(TrainingDataset.objects.get(pk=dataset_id).result_path).parent
    assert [p.name for p in folder.glob(f"*training-{dataset_id}*")] == [f"training-{dataset_id}.parquet"]

    features = list(
        Feature.objects.filter(environment=dev, component__key="c8").order_by("id").values_list("name", "ttl_seconds")
    )
    files = sorted((tmp_path / "src").rglob("c8.parquet"))
    source = pd.concat([pq.read_table(f).to_pandas() for f in files])
    expected = reference(entities, source, features)
    assert list(result.columns) == list(expected.columns)
    for name, _ in features:
        got, want = result[name], expected[name]
        assert got.isna().tolist() == want.isna().tolist(), name
        assert got[got.notna()].tolist() == want[want.notna()].tolist(), name
    assert result["label"].tolist() == entities["label"].tolist()
    # The result file lost on the server: a 404 that says so, not a 500.
    Path(TrainingDataset.objects.get(pk=dataset_id).result_path).unlink()
    missing = client_for("erin").get(f"/api/v1/training-datasets/{dataset_id}/result/")
    assert missing.status_code == 404
    assert "result file is missing" in missing.json()["message"]
    # Within the TTL: the first row finds the day before's last value; the next year and FINNIFTY find nothing.
    assert result[features[0][0]].notna().tolist() == [True, True, True, True, False, False]


def test_bad_training_requests_name_the_field(users, dev, client_for):  # noqa: F811
    bad = io.BytesIO(b"symbol,when\nNIFTY,2026-01-01\n")
    bad.name = "entities.csv"
    response = client_for("erin").post(
        "/api/v1/training-datasets/",
        {"environment": "dev", "entities": bad, "features": ["no_such_feature"]},
        format="multipart",
    )
    assert response.status_code == 400
    assert ("features[0]", "unknown_feature") in {(e["path"], e["rule"]) for e in response.json()["errors"]}
    bad.seek(0)
    response = client_for("erin").post(
        "/api/v1/training-datasets/", {"environment": "dev", "entities": bad}, format="multipart"
    )
    assert {(e["path"], e["rule"]) for e in response.json()["errors"]} >= {("entities.dte", "missing_column")}
    assert TrainingDataset.objects.count() == 0


def _request_c8(client_for) -> int:
    buffer = io.BytesIO(b"symbol,dte,event_timestamp\nNIFTY,3,2026-11-02T04:00:00Z\nNIFTY,3,2026-11-02T05:00:00Z\n")
    buffer.name = "entities.csv"
    response = client_for("erin").post(
        "/api/v1/training-datasets/",
        {"environment": "dev", "entities": buffer, "components": ["c8"]},
        format="multipart",
    )
    assert response.status_code == 201, response.json()
    return int(response.json()["id"])


def test_a_training_dataset_whose_worker_died_is_reaped_and_rerun(users, dev, client_for, tmp_path, settings):  # noqa: F811
    """A job left running by a dead worker goes back to the queue (audited) and a second run finishes it."""
    from catalog.models import AuditLogEntry
    from provisioning.training import training_datasets_reap_stale

    dataset_id = _request_c8(client_for)
    # Claimed by a worker that then died: its row says running, nothing will finish it.
    TrainingDataset.objects.filter(pk=dataset_id).update(
        state="running", claimed_by="dead:1", started_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    )
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "not-claimed"
    assert training_datasets_reap_stale() == [dataset_id]
    assert TrainingDataset.objects.get(pk=dataset_id).state == "queued"
    assert AuditLogEntry.objects.filter(action="training_dataset.reaped", object_id=str(dataset_id)).count() == 1
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "succeeded"
    settings.FCC_RUN_STALE_SECONDS = 0
    assert training_datasets_reap_stale() == []  # finished: nothing to send


def test_a_worker_that_lost_its_claim_leaves_the_result_and_the_row_alone(
    users,
    dev,  # noqa: F811
    client_for,
    monkeypatch,
    settings,
    tmp_path,
):
    """Reaped while it lived (its heartbeats did not get through) and claimed by another worker: the first worker's
    finished result is thrown away, not moved over the second's file, and nothing is recorded in its name."""
    from catalog.models import AuditLogEntry
    from provisioning import retrieval, training

    settings.DATA_DIR = tmp_path  # a folder of its own: ids start again in each test's database
    dataset_id = _request_c8(client_for)
    written = retrieval.write_parquet_batches

    def write_then_lose_the_claim(batches, path, **options):
        rows = written(batches, path, **options)
        TrainingDataset.objects.filter(pk=dataset_id).update(claimed_by="second-worker")
        return rows

    monkeypatch.setattr("provisioning.training.write_parquet_batches", write_then_lose_the_claim)
    assert training_dataset_execute(dataset_id=dataset_id, worker="first-worker") == "lost-claim"
    dataset = TrainingDataset.objects.get(pk=dataset_id)
    assert (dataset.state, dataset.claimed_by, dataset.result_path) == ("running", "second-worker", "")
    folder = training._directory()
    assert not list(folder.glob(f"*training-{dataset_id}.parquet*"))
    assert not AuditLogEntry.objects.filter(action="training_dataset.succeeded").exists()


def test_a_failed_training_dataset_says_why_and_is_audited(users, dev, client_for, monkeypatch, settings, tmp_path):  # noqa: F811
    from catalog.models import AuditLogEntry
    from provisioning import training

    settings.DATA_DIR = tmp_path
    dataset_id = _request_c8(client_for)

    def broken(batches, path, **options):
        Path(path).write_bytes(b"half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr("provisioning.training.write_parquet_batches", broken)
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "failed"
    dataset = TrainingDataset.objects.get(pk=dataset_id)
    assert dataset.state == "failed"
    assert dataset.error == "OSError: No space left on device"
    assert not list(training._directory().glob(f"*training-{dataset_id}.parquet*"))
    entry = AuditLogEntry.objects.get(action="training_dataset.failed", object_id=str(dataset_id))
    assert entry.after["error"] == "OSError: No space left on device"


@pytest.mark.django_db(transaction=True)  # the heartbeat thread writes on its own connection
def test_a_training_job_longer_than_the_stale_period_is_not_reaped_while_its_worker_lives(
    users,
    dev,  # noqa: F811
    client_for,
    settings,
    monkeypatch,
):
    from catalog.models import AuditLogEntry
    from provisioning import retrieval, training

    settings.FCC_RUN_STALE_SECONDS = 1
    dataset_id = _request_c8(client_for)
    TrainingDataset.objects.filter(pk=dataset_id).update(created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    reaped: list[list[int]] = []
    written = retrieval.write_parquet_batches

    def slow(batches, path, **options):
        time.sleep(3)  # three stale periods inside the job
        reaped.append(training.training_datasets_reap_stale())
        return written(batches, path, **options)

    monkeypatch.setattr("provisioning.training.write_parquet_batches", slow)
    assert training_dataset_execute(dataset_id=dataset_id, worker="alive") == "succeeded"
    assert reaped == [[]]
    assert not AuditLogEntry.objects.filter(action="training_dataset.reaped").exists()
