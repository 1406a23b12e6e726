"""The training dataset pages: list and filters, the request form (as the API's create), live progress and the
download. Any signed-in user may use them, as the API; tests/test_console_access.py checks that for every persona."""

import datetime as dt
import io
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from catalog.models import AuditLogEntry, Environment
from provisioning.backfill import backfill_execute
from provisioning.models import TrainingDataset
from provisioning.training import training_dataset_execute
from tests.test_backfill import dev, request, stores, write_source  # noqa: F401 - fixtures

pytestmark = pytest.mark.django_db

GOOD_CSV = b"symbol,dte,event_timestamp,label\nNIFTY,3,2026-11-24T04:10:17Z,1\nBANKNIFTY,3,2026-11-24T05:30:45Z,0\n"


@pytest.fixture(autouse=True)
def data_dir(settings, tmp_path) -> Path:
    """Entity files and results in this test's own folder: ids start again in each test's database."""
    settings.DATA_DIR = tmp_path / "data"
    return Path(settings.DATA_DIR)


def signed_in(users: dict[str, Any], persona: str, *, csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=csrf)
    client.force_login(users[persona])
    return client


def entities(content: bytes = GOOD_CSV, name: str = "entities.csv") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="text/csv")


def post_request(client: Client, **fields: Any) -> Any:
    body = {"environment": "dev", "entities": entities(), **fields}
    return client.post("/training-datasets/request/", body)


def make_dataset(environment: Environment, state: str, **fields: Any) -> TrainingDataset:
    """A row in the given state, as a worker would have left it (no file needed for the pages that only list)."""
    return TrainingDataset.objects.create(
        environment=environment, entity_file="/nowhere/entities.csv", entity_rows=3, state=state, **fields
    )


def table_ids(body: str) -> set[int]:
    return {int(n) for n in re.findall(r'href="/training-datasets/(\d+)/"', body)}


def test_the_list_shows_every_state_and_filters_by_environment_and_state(users, reference):
    dev_env = Environment.objects.get(name="dev")
    staging = Environment.objects.get(name="staging")
    started = dt.datetime(2026, 11, 24, 4, 0, tzinfo=dt.UTC)
    queued = make_dataset(dev_env, "queued", selection={"features": [], "components": [], "all": True})
    running = make_dataset(
        dev_env, "running", claimed_by="w1", started_at=started, selection={"features": ["a", "b"], "components": []}
    )
    succeeded = make_dataset(
        staging,
        "succeeded",
        selection={"features": [], "components": ["c1", "c8"]},
        result_rows=1234567,
        result_bytes=2048,
        started_at=started,
        finished_at=started + dt.timedelta(seconds=90),
        requested_by=users["alice"],
    )
    failed = make_dataset(staging, "failed", error="OSError: disk full", selection={"features": ["a"]})
    client = signed_in(users, "erin")

    body = client.get("/training-datasets/").content.decode()
    assert table_ids(body) == {queued.pk, running.pk, succeeded.pk, failed.pk}
    for state in ("queued", "running", "succeeded", "failed"):
        assert f">{state}</span>" in body
    assert ">all</td>" in body
    assert ">2 features</td>" in body
    assert ">components c1, c8</td>" in body
    assert ">1 feature</td>" in body
    assert "1,234,567" in body  # result rows of the succeeded one
    assert "2.0\xa0KB" in body  # its size
    assert "90.0 s" in body  # and how long it took
    assert ">alice</td>" in body

    assert table_ids(client.get("/training-datasets/?env=dev").content.decode()) == {queued.pk, running.pk}
    assert table_ids(client.get("/training-datasets/?state=failed").content.decode()) == {failed.pk}
    assert table_ids(client.get("/training-datasets/?env=staging&state=succeeded").content.decode()) == {succeeded.pk}
    assert table_ids(client.get("/training-datasets/?env=dev&state=failed").content.decode()) == set()
    # An unknown state is no filter; an unknown environment is a 404, as on the backfills page.
    assert len(table_ids(client.get("/training-datasets/?state=nonsense").content.decode())) == 4
    assert client.get("/training-datasets/?env=nowhere").status_code == 404


def test_the_list_offers_the_request_form_and_is_in_the_menu(users, reference):
    body = signed_in(users, "erin").get("/training-datasets/?env=staging").content.decode()
    form = re.search(r'<form method="post" action="/training-datasets/request/"[^>]*>.*?</form>', body, flags=re.S)
    assert form is not None
    assert 'enctype="multipart/form-data"' in form.group(0)
    assert 'type="file" name="entities"' in form.group(0)
    assert 'name="components" value="c1"' in form.group(0)
    assert '<textarea name="features"' in form.group(0)
    assert "symbol, dte, event_timestamp" in form.group(0)
    assert '<option value="staging" selected>' in form.group(0)
    assert '<a href="/training-datasets/" aria-current="page">Training datasets</a>' in body


def test_a_request_from_the_form_queues_a_dataset_audits_it_and_opens_its_page(
    users,
    dev,  # noqa: F811
    django_capture_on_commit_callbacks,
    monkeypatch,
):
    from workers import tasks

    sent: list[Any] = []
    monkeypatch.setattr(tasks.training_dataset_task, "delay", lambda *a, **k: sent.append(a))
    client = signed_in(users, "erin")
    with django_capture_on_commit_callbacks(execute=True):
        response = post_request(client, components=["c8"], features="atm_call_premium,\r\n atm_put_premium\n")
    dataset = TrainingDataset.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/training-datasets/{dataset.pk}/"
    assert (dataset.state, dataset.environment.name, dataset.requested_by, dataset.entity_rows) == (
        "queued",
        "dev",
        users["erin"],
        2,
    )
    assert dataset.selection == {
        "features": ["atm_call_premium", "atm_put_premium"],
        "components": ["c8"],
        "all": False,
    }
    assert Path(dataset.entity_file).read_bytes() == GOOD_CSV
    assert sent == [(dataset.pk,)]
    entry = AuditLogEntry.objects.get(action="training_dataset.request")
    assert (entry.actor_name, entry.object_id, entry.environment) == ("erin", str(dataset.pk), "dev")

    page = client.get(response["Location"])
    body = page.content.decode()
    assert any(f"Training dataset {dataset.pk} queued" in str(m) for m in page.context["messages"])
    assert "2 features + components c8" in body
    # Live: the progress part polls every second, and there is nothing to download yet.
    assert f'hx-get="/training-datasets/{dataset.pk}/progress/" hx-trigger="every 1s"' in body
    assert f"/training-datasets/{dataset.pk}/result/" not in body
    progress = client.get(f"/training-datasets/{dataset.pk}/progress/")
    assert progress.status_code == 200
    assert "waiting for a worker" in progress.content.decode()


def test_nothing_named_and_nothing_ticked_asks_for_every_feature(users, dev):  # noqa: F811
    response = post_request(signed_in(users, "bob"))
    assert response.status_code == 302
    assert TrainingDataset.objects.get().selection == {"features": [], "components": [], "all": True}


def test_a_bad_request_lists_its_problems_with_400_and_writes_nothing(users, dev, data_dir):  # noqa: F811
    client = signed_in(users, "erin")
    audit = AuditLogEntry.objects.count()

    unknown = post_request(client, features="atm_call_premium\nno_such_feature", components=["c1"])
    assert unknown.status_code == 400
    body = unknown.content.decode()
    assert "Not requested: 1 problem(s) in the training dataset request" in body
    assert '<td class="mono">features[1]</td><td class="mono">unknown_feature</td>' in body
    assert "&#x27;no_such_feature&#x27; is not an active feature in dev" in body
    # The page is still the list, with the form to try again.
    assert 'action="/training-datasets/request/"' in body
    assert '<textarea name="features"' in body
    assert "no_such_feature</textarea>" in body

    missing = post_request(client, entities=entities(b"symbol,when\nNIFTY,2026-01-01\n"))
    assert missing.status_code == 400
    body = missing.content.decode()
    assert "the entity file lacks required columns" in body
    for column in ("dte", "event_timestamp"):
        assert f'<td class="mono">entities.{column}</td><td class="mono">missing_column</td>' in body
    assert "symbol" not in re.findall(r"entities\.(\w+)</td>", body)

    wrong_type = post_request(client, entities=entities(GOOD_CSV, name="entities.xlsx"))
    assert wrong_type.status_code == 400
    assert '<td class="mono">entities</td><td class="mono">file_type</td>' in wrong_type.content.decode()

    no_file = client.post("/training-datasets/request/", {"environment": "dev"})
    assert no_file.status_code == 400
    assert '<td class="mono">entities</td><td class="mono">required</td>' in no_file.content.decode()

    unknown_environment = post_request(client, environment="qa")
    assert unknown_environment.status_code == 400
    assert '<td class="mono">environment</td><td class="mono">invalid_choice</td>' in (
        unknown_environment.content.decode()
    )

    assert TrainingDataset.objects.count() == 0
    assert AuditLogEntry.objects.count() == audit
    training = data_dir / "training"
    assert not training.exists() or list(training.iterdir()) == []


def test_a_succeeded_dataset_offers_its_download_which_is_the_file(users, dev):  # noqa: F811
    client = signed_in(users, "erin")
    response = post_request(client, components=["c8"])
    dataset_id = int(response["Location"].strip("/").split("/")[-1])
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "succeeded"
    dataset = TrainingDataset.objects.get(pk=dataset_id)

    body = client.get(f"/training-datasets/{dataset_id}/").content.decode()
    assert f'href="/training-datasets/{dataset_id}/result/"' in body
    assert "hx-get" not in body  # finished: nothing polls
    assert f"{len(dataset.features)} <details>" in body
    progress = client.get(f"/training-datasets/{dataset_id}/progress/")
    assert progress.status_code == 286  # htmx stops polling
    assert f'href="/training-datasets/{dataset_id}/result/"' in progress.content.decode()

    download = client.get(f"/training-datasets/{dataset_id}/result/")
    assert download.status_code == 200
    assert download["Content-Type"] == "application/vnd.apache.parquet"
    assert download["Content-Disposition"] == f'attachment; filename="training-dataset-{dataset_id}.parquet"'
    assert download.streaming  # a FileResponse, sent in chunks
    content = download.getvalue()
    assert content == Path(dataset.result_path).read_bytes()
    assert pq.read_table(io.BytesIO(content)).num_rows == dataset.result_rows == 2


def test_the_download_answers_with_the_joined_values(users, dev, client_for, tmp_path):  # noqa: F811
    """Loaded history in, values out: the file the page sends holds the features' values, not only their names."""
    write_source(tmp_path / "src")
    backfill_id = request(client_for("carol"), tmp_path / "src").json()["id"]
    assert backfill_execute(backfill_id=backfill_id, worker="t") == "succeeded"
    client = signed_in(users, "erin")
    response = post_request(client, components=["c8"])
    dataset_id = int(response["Location"].strip("/").split("/")[-1])
    assert training_dataset_execute(dataset_id=dataset_id, worker="t") == "succeeded"
    content = client.get(f"/training-datasets/{dataset_id}/result/").getvalue()
    result = pq.read_table(io.BytesIO(content)).to_pandas()
    features = TrainingDataset.objects.get(pk=dataset_id).features
    assert list(result.columns) == ["symbol", "dte", "event_timestamp", "label", *features]
    assert result[features[0]].notna().all()
    assert result["label"].tolist() == [1, 0]
    assert pd.api.types.is_datetime64_any_dtype(result["event_timestamp"])


def test_the_download_of_an_unfinished_dataset_is_refused_and_a_missing_one_is_404(users, reference):
    dev_env = Environment.objects.get(name="dev")
    queued = make_dataset(dev_env, "queued")
    failed = make_dataset(dev_env, "failed", error="OSError: No space left on device")
    client = signed_in(users, "erin")

    refused = client.get(f"/training-datasets/{queued.pk}/result/")
    assert refused.status_code == 409
    assert f"Training dataset {queued.pk} is queued; its result is not ready." in refused.content.decode()
    assert client.get(f"/training-datasets/{failed.pk}/result/").status_code == 409

    body = client.get(f"/training-datasets/{failed.pk}/").content.decode()
    assert '<p class="not-allowed" role="alert"><strong>Error:</strong> OSError: No space left on device</p>' in body
    assert "/result/" not in body
    assert client.get(f"/training-datasets/{failed.pk}/progress/").status_code == 286

    gone = make_dataset(dev_env, "succeeded", result_path="/nowhere/training-gone.parquet")
    assert client.get(f"/training-datasets/{gone.pk}/result/").status_code == 404
    for suffix in ("", "progress/", "result/"):
        assert client.get(f"/training-datasets/99999/{suffix}").status_code == 404


def test_the_request_needs_its_csrf_token_and_a_post(users, dev):  # noqa: F811
    client = signed_in(users, "root", csrf=True)
    audit = AuditLogEntry.objects.count()
    assert post_request(client, components=["c8"]).status_code == 403
    assert TrainingDataset.objects.count() == 0
    assert AuditLogEntry.objects.count() == audit
    # With the page's token it goes through.
    page = client.get("/training-datasets/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode())
    assert token is not None
    assert post_request(client, components=["c8"], csrfmiddlewaretoken=token.group(1)).status_code == 302
    assert TrainingDataset.objects.count() == 1
    assert signed_in(users, "erin").get("/training-datasets/request/").status_code == 405


def test_home_lists_the_environments_recent_training_datasets(users, reference):
    dev_env = Environment.objects.get(name="dev")
    staging = Environment.objects.get(name="staging")
    mine = make_dataset(dev_env, "running")
    other = make_dataset(staging, "queued")
    body = signed_in(users, "erin").get("/?env=dev").content.decode()
    assert "Recent training datasets" in body
    assert table_ids(body) == {mine.pk}
    assert other.pk not in table_ids(body)
    assert 'href="/training-datasets/?env=dev"' in body
