"""Training datasets: point-in-time correct feature values for entity rows, written as Parquet by a worker."""

import logging
import os
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from catalog.audit import audit_log_write
from catalog.errors import NotFound, Problem, SpecValidationError
from catalog.models import Environment, Feature
from provisioning.backends import offline_store_for
from provisioning.dispatch import task_send_on_commit
from provisioning.heartbeat import heartbeat
from provisioning.models import TrainingDataset
from provisioning.retrieval import (
    RetrievalError,
    feature_refs_from_catalog,
    read_entity_file,
    write_parquet_batches,
)

logger = logging.getLogger(__name__)
MAX_ENTITY_FILE_BYTES = 512 * 1024 * 1024
REQUIRED = ("symbol", "dte", "event_timestamp")
PARQUET_ROW_GROUP_ROWS = 65_536


class TrainingRequestError(SpecValidationError):
    code = "invalid_training_request"


def _directory() -> Path:
    path = Path(settings.DATA_DIR) / "training"
    path.mkdir(parents=True, exist_ok=True)
    return path


def training_dataset_request(
    *, user: Any, environment_name: str, upload: UploadedFile[Any], features: list[str], components: list[str]
) -> TrainingDataset:
    """Checks the entity file and the feature selection (every problem at once), stores the file, queues the job."""
    environment = Environment.objects.filter(name=environment_name).first()
    if environment is None:
        raise NotFound(f"environment {environment_name!r} does not exist")
    problems: list[Problem] = []
    name = upload.name or "entities"
    suffix = Path(name).suffix.lower()
    if suffix not in (".parquet", ".csv"):
        problems.append(Problem("entities", "file_type", f"{name!r}: the entity file must be .parquet or .csv"))
    if (upload.size or 0) > MAX_ENTITY_FILE_BYTES:
        problems.append(
            Problem("entities", "too_large", f"the entity file is larger than {MAX_ENTITY_FILE_BYTES} bytes")
        )
    active = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE)
    known_names = set(active.filter(name__in=features).values_list("name", flat=True))
    problems.extend(
        Problem(f"features[{i}]", "unknown_feature", f"{n!r} is not an active feature in {environment.name}")
        for i, n in enumerate(features)
        if n not in known_names
    )
    known_components = set(active.values_list("component__key", flat=True).distinct())
    problems.extend(
        Problem(f"components[{i}]", "unknown_component", f"{c!r} has no active features in {environment.name}")
        for i, c in enumerate(components)
        if c not in known_components
    )
    if problems:
        raise TrainingRequestError(f"{len(problems)} problem(s) in the training dataset request", problems=problems)
    path = _directory() / f"entities-{uuid.uuid4().hex}{suffix}"
    with path.open("wb") as handle:
        for chunk in upload.chunks():
            handle.write(chunk)
    try:
        table = read_entity_file(path)
    except (RetrievalError, ValueError, OSError) as error:
        path.unlink(missing_ok=True)
        raise TrainingRequestError(
            "the entity file cannot be read", problems=[Problem("entities", "unreadable", str(error)[:500])]
        ) from error
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        path.unlink(missing_ok=True)
        raise TrainingRequestError(
            "the entity file lacks required columns",
            problems=[
                Problem(f"entities.{c}", "missing_column", f"the entity file has no {c!r} column") for c in missing
            ],
        )
    selection = {"features": features, "components": components, "all": not features and not components}
    with transaction.atomic():
        dataset = TrainingDataset.objects.create(
            environment=environment,
            requested_by=user if getattr(user, "is_authenticated", False) else None,
            entity_file=str(path),
            entity_rows=table.num_rows,
            selection=selection,
        )
        audit_log_write(
            actor=user,
            action="training_dataset.request",
            object_type="training_dataset",
            object_id=dataset.pk,
            environment=environment.name,
            after={"rows": table.num_rows, **selection},
        )

        from workers.tasks import training_dataset_task

        task_send_on_commit(training_dataset_task, dataset.pk, job="training_dataset")
    return dataset


def training_datasets_reap_stale() -> list[int]:
    """Datasets to send to a worker again: queued ones whose message was lost (older than a stale period), and
    running ones whose worker died (no heartbeat for FCC_RUN_STALE_SECONDS), put back in the queue. A worker
    that lives beats however long the job takes; one reaped all the same (its heartbeats did not get through)
    finds its claim gone at the end and writes nothing."""
    now = timezone.now()
    cutoff = now - timedelta(seconds=int(settings.FCC_RUN_STALE_SECONDS))
    freed = []
    running = TrainingDataset.State.RUNNING
    stale = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    for dataset in TrainingDataset.objects.filter(stale, state=running).select_related("environment"):
        with transaction.atomic():
            if TrainingDataset.objects.filter(stale, pk=dataset.pk, state=running).update(
                state=TrainingDataset.State.QUEUED, started_at=None, heartbeat_at=None
            ):
                audit_log_write(
                    actor=None,
                    action="training_dataset.reaped",
                    object_type="training_dataset",
                    object_id=dataset.pk,
                    environment=dataset.environment.name,
                    after={"previous_worker": dataset.claimed_by},
                )
                freed.append(dataset.pk)
    waiting = TrainingDataset.objects.filter(state=TrainingDataset.State.QUEUED, created_at__lt=cutoff)
    freed.extend(pk for pk in waiting.values_list("pk", flat=True) if pk not in freed)
    return freed


def training_dataset_execute(*, dataset_id: int, worker: str) -> str:
    """Claims and builds a training dataset; its final state, or `not-claimed` / `lost-claim`. Safe to call
    again: a claim is a compare-and-set, and the result file is put in place only while the claim holds."""
    now = timezone.now()
    with transaction.atomic():
        claimed = TrainingDataset.objects.filter(pk=dataset_id, state=TrainingDataset.State.QUEUED).update(
            state=TrainingDataset.State.RUNNING, claimed_by=worker, started_at=now, heartbeat_at=now
        )
        if not claimed:
            return "not-claimed"
        dataset = TrainingDataset.objects.select_related("environment").get(pk=dataset_id)
        # One entry per claim: a job rerun after its worker died shows its reaping and each new claim.
        audit_log_write(
            actor=None,
            action="training_dataset.claim",
            object_type="training_dataset",
            object_id=dataset.pk,
            environment=dataset.environment.name,
            after={"worker": worker},
        )
    with heartbeat(TrainingDataset, dataset.pk, state=TrainingDataset.State.RUNNING, claimed_by=worker):
        return _build_claimed(dataset, worker)


def _build_claimed(dataset: TrainingDataset, worker: str) -> str:
    selection = dataset.selection
    refs = feature_refs_from_catalog(
        dataset.environment,
        names=selection.get("features") or None,
        components=selection.get("components") or None,
    )
    if selection.get("features") and selection.get("components"):
        # Both given: the named features and every feature of the named components.
        refs = [
            *feature_refs_from_catalog(dataset.environment, names=selection["features"]),
            *feature_refs_from_catalog(dataset.environment, components=selection["components"]),
        ]
        refs = list({r.name: r for r in refs}.values())
    path = _directory() / f"training-{dataset.pk}.parquet"
    # A name of this claim's own: a worker reaped while it lived may still be writing one of its own.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        entities = read_entity_file(dataset.entity_file)
        store = offline_store_for(dataset.environment)
        # A batch of entity rows at a time, each written out before the next is read: the job holds one batch's
        # features, however many rows the entity file has.
        batches = store.point_in_time_batches(entities, refs, int(settings.FCC_TRAINING_ROWS_PER_BATCH))
        rows = write_parquet_batches(batches, temporary, row_group_size=PARQUET_ROW_GROUP_ROWS)
    except Exception as error:  # noqa: BLE001 - recorded on the dataset for the person who asked
        temporary.unlink(missing_ok=True)
        logger.error("training dataset failed", extra={"training_dataset": dataset.pk, "error": str(error)})
        return _finish(dataset, worker, TrainingDataset.State.FAILED, error=f"{type(error).__name__}: {error}")
    return _finish(
        dataset,
        worker,
        TrainingDataset.State.SUCCEEDED,
        result=(temporary, path, rows),
        features=[r.name for r in refs],
    )


def _finish(
    dataset: TrainingDataset,
    worker: str,
    state: str,
    *,
    error: str = "",
    result: tuple[Path, Path, int] | None = None,
    features: list[str] | None = None,
) -> str:
    """Records the outcome, with its audit entry, only while this worker still holds the claim; the result file
    is moved into place in the same transaction (a worker that lost its claim leaves the file alone)."""
    fields: dict[str, Any] = {"state": state, "finished_at": timezone.now(), "error": error[:4000]}
    after: dict[str, Any] = {"state": state, "worker": worker}
    if result is not None:
        temporary, path, rows = result
        size = temporary.stat().st_size
        fields.update(result_path=str(path), result_rows=rows, result_bytes=size, features=features or [])
        after.update(rows=rows, bytes=size)
    if error:
        after["error"] = error[:500]
    try:
        with transaction.atomic():
            held = TrainingDataset.objects.filter(
                pk=dataset.pk, state=TrainingDataset.State.RUNNING, claimed_by=worker
            ).update(**fields)
            if not held:
                logger.warning("training dataset claim lost before it finished", extra={"training_dataset": dataset.pk})
                return "lost-claim"
            audit_log_write(
                actor=None,
                action=f"training_dataset.{state}",
                object_type="training_dataset",
                object_id=dataset.pk,
                environment=dataset.environment.name,
                after=after,
            )
            if result is not None:
                os.replace(result[0], result[1])
    finally:
        if result is not None:
            result[0].unlink(missing_ok=True)
    return state
