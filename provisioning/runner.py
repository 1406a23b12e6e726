"""Executes provisioning runs: the approved plan's steps in order, each idempotent and recorded.

A worker claims a run with a compare-and-set (queued -> running); a rerun resumes at the first unfinished
step; the reaper frees runs whose worker stopped beating. Transient store errors are retried with backoff up
to a bound; anything else fails the run with a message a person can act on.
"""

import logging
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from catalog.audit import audit_log_write
from catalog.models import ChangeRequest, Environment
from provisioning import desired
from provisioning.backends import offline_store_for, online_store_for
from provisioning.backfill import backfill_enqueue
from provisioning.ddl import VIEW_NAME, Column, TableSpec
from provisioning.errors import PermanentStoreError, StoreError
from provisioning.heartbeat import heartbeat
from provisioning.models import Backfill, ProvisioningRun, ProvisioningStep
from provisioning.offline.base import StepOutcome
from provisioning.preflight import preflight
from provisioning.retries import store_call_with_retries

logger = logging.getLogger(__name__)


class RunNotReady(Exception):
    """An earlier run of the same environment has not finished; this one must wait its turn (the earlier run
    hands the turn on when it ends: run_in_turn)."""


def _target(step: dict[str, Any]) -> str:
    return str(step.get("table") or step.get("view") or step.get("component") or step.get("kind"))


PREFLIGHT = {"kind": "preflight"}


def _run_steps(run: ProvisioningRun) -> list[dict[str, Any]]:
    """Step 0 is the preflight; the plan's steps follow in order."""
    return [PREFLIGHT, *run.plan["steps"]]


def _steps_ensure(run: ProvisioningRun) -> list[ProvisioningStep]:
    existing = {s.index: s for s in run.steps.all()}
    created = [
        ProvisioningStep(run=run, index=i, kind=step["kind"], target=_target(step))
        for i, step in enumerate(_run_steps(run))
        if i not in existing
    ]
    ProvisioningStep.objects.bulk_create(created, ignore_conflicts=True)
    return list(run.steps.order_by("index"))


class RunContext:
    """What the steps of one run share: the stores (one connection each) and the desired tables, built once."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment
        self.offline = offline_store_for(environment)
        self._tables: dict[str, TableSpec] | None = None

    @property
    def tables(self) -> dict[str, TableSpec]:
        if self._tables is None:
            self._tables = desired.all_tables(self.environment)
        return self._tables


def _execute_step(run: ProvisioningRun, context: RunContext, step: dict[str, Any]) -> StepOutcome:
    kind = step["kind"]
    environment = context.environment
    offline = context.offline
    if kind == "preflight":
        result = preflight(offline, environment, run.plan, context.tables)
        return StepOutcome(request=[f"dry run of {result['statements']} statements"], changed=False, result=result)
    if kind == "ensure_dataset":
        return offline.ensure_dataset()
    if kind == "create_table":
        return offline.create_table(context.tables[step["component"]])
    if kind == "update_table_metadata":
        # The metadata describes the current catalog's columns, newer revisions' included: those first.
        ahead = _create_ahead(context, component=step["component"])
        return _with_ahead(ahead, offline.set_table_metadata(context.tables[step["component"]]))
    if kind == "add_columns":
        return offline.add_columns(step["table"], [Column(c["name"], c["type"]) for c in step["columns"]])
    if kind == "widen_columns":
        return offline.widen_columns(step["table"], [(c["name"], c["new"]) for c in step["columns"]])
    if kind == "replace_view":
        ahead = _create_ahead(context)
        outcome = offline.replace_view(VIEW_NAME, desired.training_view(environment))
        return _with_ahead(ahead, outcome)
    if kind == "update_online_store":
        ahead = _create_ahead(context)
        # The online features' source views first (Vertex AI's feature groups read them; Vertex checks the
        # source when features are registered), then the online resources.
        requests: list[Any] = []
        for view_name, sql in desired.online_source_views(environment).items():
            requests.extend(offline.replace_view(view_name, sql).request)
        outcome = online_store_for(environment).update(desired.online_view(environment))
        return _with_ahead(
            ahead, StepOutcome(request=[*requests, *outcome.request], changed=outcome.changed, result=outcome.result)
        )
    if kind == "schedule_backfill":
        with transaction.atomic():
            backfill, created = Backfill.objects.get_or_create(
                provisioning_run=run,
                reason=f"breaking change: {step['component']}.{step['feature']} -> column {step['column']}",
                defaults={
                    "environment": environment,
                    "components": [step["component"]],
                    "source": settings.FCC_PARQUET_ROOT,
                },
            )
            if created:
                backfill_enqueue(backfill)
        return StepOutcome(
            request=[f"backfill {step['component']} from {backfill.source}"],
            changed=created,
            result={"backfill": backfill.pk},
        )
    raise PermanentStoreError(f"unknown step kind {kind!r}: this worker is older than the plan; upgrade it")


def _create_ahead(context: RunContext, component: str | None = None) -> StepOutcome:
    """The tables and columns of newer approved revisions that the current catalog's views and metadata name
    (see desired.ahead_of_stores; of one component's table, or all), created first: additive and idempotent, so
    the later run finds them in place."""
    tables = context.tables if component is None else {component: context.tables[component]}
    to_create, to_add = desired.ahead_of_stores(tables, context.offline.describe())
    outcomes = [context.offline.create_table(table) for table in to_create]
    outcomes += [context.offline.add_columns(name, columns) for name, columns in to_add.items()]
    created = {"tables": [t.name for t in to_create], "columns": {n: [c.name for c in cs] for n, cs in to_add.items()}}
    return StepOutcome(
        request=[r for o in outcomes for r in o.request],
        changed=any(o.changed for o in outcomes),
        result={"created_ahead_for_newer_revisions": created} if outcomes else {},
    )


def _with_ahead(ahead: StepOutcome, outcome: StepOutcome) -> StepOutcome:
    return StepOutcome(
        request=[*ahead.request, *outcome.request],
        changed=ahead.changed or outcome.changed,
        result={**ahead.result, **outcome.result},
    )


def _set_change_request_state(run: ProvisioningRun, state: str, reason: str = "") -> None:
    if run.change_request_id is None:
        return
    with transaction.atomic():
        cr = ChangeRequest.objects.select_for_update().get(pk=run.change_request_id)
        if cr.state == state:
            return
        before = {"state": cr.state}
        cr.state = state
        cr.failure_reason = reason
        cr.save(update_fields=["state", "failure_reason", "updated_at"])
        audit_log_write(
            actor=None,
            action=f"change_request.{state}",
            object_type="change_request",
            object_id=cr.pk,
            environment=run.environment.name,
            before=before,
            after={"state": state, "provisioning_run": run.pk, **({"reason": reason} if reason else {})},
        )


def run_claim(run_id: int, worker: str) -> bool:
    now = timezone.now()
    claimed = ProvisioningRun.objects.filter(pk=run_id, state=ProvisioningRun.State.QUEUED).update(
        state=ProvisioningRun.State.RUNNING,
        claimed_by=worker,
        claimed_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
    )
    return claimed == 1


def _execute_steps(run: ProvisioningRun, context: RunContext) -> bool:
    """Executes the unfinished steps in order; True when one failed (the run and change request are marked)."""
    for step_row in _steps_ensure(run):
        if step_row.status == ProvisioningStep.Status.SUCCEEDED:
            continue
        plan_step = _run_steps(run)[step_row.index]
        step_row.status = ProvisioningStep.Status.RUNNING
        step_row.started_at = timezone.now()
        step_row.error = ""
        step_row.save(update_fields=["status", "started_at", "error"])

        def attempt(row: ProvisioningStep = step_row) -> None:
            ProvisioningStep.objects.filter(pk=row.pk).update(attempts=F("attempts") + 1)
            ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())

        def call(step: dict[str, Any] = plan_step) -> StepOutcome:
            return _execute_step(run, context, step)

        try:
            outcome = store_call_with_retries(call, attempt)
        except StoreError as error:
            message = f"step {step_row.index} ({step_row.kind} {step_row.target}) failed: {error}"
            step_row.status = ProvisioningStep.Status.FAILED
            step_row.error = message
            step_row.finished_at = timezone.now()
            step_row.save(update_fields=["status", "error", "finished_at"])
            _finish(run, ProvisioningRun.State.FAILED, message)
            _set_change_request_state(run, ChangeRequest.State.FAILED, message)
            logger.error("provisioning run failed", extra={"run": run.pk, "error": message})
            return True
        step_row.status = ProvisioningStep.Status.SUCCEEDED
        step_row.request = outcome.request
        step_row.result = {"changed": outcome.changed, **outcome.result}
        step_row.finished_at = timezone.now()
        step_row.save(update_fields=["status", "request", "result", "finished_at"])
        ProvisioningRun.objects.filter(pk=run.pk).update(heartbeat_at=timezone.now())
    return False


def run_execute(*, run_id: int, worker: str) -> str:
    """Claims and executes a run. Returns its final state, or why nothing was done."""
    run = ProvisioningRun.objects.select_related("environment").filter(pk=run_id).first()
    if run is None:
        return "missing"
    earlier = ProvisioningRun.objects.filter(
        environment=run.environment,
        revision__lt=run.revision,
        state__in=[ProvisioningRun.State.QUEUED, ProvisioningRun.State.RUNNING],
    )
    if earlier.exists():
        raise RunNotReady(f"run {run.pk} waits for earlier runs of {run.environment.name}")
    if not run_claim(run_id, worker):
        logger.info("run already claimed or finished", extra={"run": run_id})
        return "not-claimed"
    run.refresh_from_db()
    with transaction.atomic():
        audit_log_write(
            actor=None,
            action="provisioning_run.claim",
            object_type="provisioning_run",
            object_id=run.pk,
            environment=run.environment.name,
            after={"worker": worker, "attempt": run.attempts},
        )
    _set_change_request_state(run, ChangeRequest.State.APPLYING)
    context = RunContext(run.environment)
    held = {"state": ProvisioningRun.State.RUNNING, "claimed_by": worker}
    with heartbeat(ProvisioningRun, run.pk, **held), context.offline.session():
        failed = _execute_steps(run, context)
    if failed:
        return ProvisioningRun.State.FAILED
    _finish(run, ProvisioningRun.State.SUCCEEDED, "")
    _set_change_request_state(run, ChangeRequest.State.APPLIED)
    logger.info("provisioning run succeeded", extra={"run": run.pk})
    return ProvisioningRun.State.SUCCEEDED


def run_in_turn(environment_id: int) -> int | None:
    """The queued run of the environment whose turn comes next (the lowest revision), to be sent when a run of
    the environment ends: a run that found an earlier one unfinished was not kept waiting in the broker."""
    queued = ProvisioningRun.objects.filter(environment_id=environment_id, state=ProvisioningRun.State.QUEUED)
    return queued.order_by("revision", "pk").values_list("pk", flat=True).first()


def _finish(run: ProvisioningRun, state: str, error: str) -> None:
    with transaction.atomic():
        ProvisioningRun.objects.filter(pk=run.pk).update(state=state, error=error, finished_at=timezone.now())
        audit_log_write(
            actor=None,
            action=f"provisioning_run.{state}",
            object_type="provisioning_run",
            object_id=run.pk,
            environment=run.environment.name,
            after={"state": state, **({"error": error} if error else {})},
        )


def runs_reap_stale() -> list[int]:
    """Puts runs whose worker died back in the queue (a rerun resumes at the first unfinished step)."""
    cutoff = timezone.now() - timedelta(seconds=int(settings.FCC_RUN_STALE_SECONDS))
    freed = []
    for run in ProvisioningRun.objects.filter(state=ProvisioningRun.State.RUNNING, heartbeat_at__lt=cutoff):
        with transaction.atomic():
            if (
                ProvisioningRun.objects.filter(
                    pk=run.pk, state=ProvisioningRun.State.RUNNING, heartbeat_at__lt=cutoff
                ).update(state=ProvisioningRun.State.QUEUED, heartbeat_at=timezone.now())
                == 1
            ):
                ProvisioningStep.objects.filter(run=run, status=ProvisioningStep.Status.RUNNING).update(
                    status=ProvisioningStep.Status.PENDING
                )
                audit_log_write(
                    actor=None,
                    action="provisioning_run.reaped",
                    object_type="provisioning_run",
                    object_id=run.pk,
                    environment=run.environment.name,
                    after={"previous_worker": run.claimed_by},
                )
                freed.append(run.pk)
    # A queued run whose task message was lost (a broker restart without persistence) is sent again; the
    # claim's compare-and-set makes a duplicate delivery harmless. A run reaped just now (its heartbeat is the
    # reaping time) was sent above: it is sent again only if it is still unclaimed a stale period later.
    # Only a run whose turn it is: a later one is sent when the one before it ends (run_in_turn).
    unsent = Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff)
    earlier = ProvisioningRun.objects.filter(
        environment=OuterRef("environment"),
        revision__lt=OuterRef("revision"),
        state__in=[ProvisioningRun.State.QUEUED, ProvisioningRun.State.RUNNING],
    )
    waiting = ProvisioningRun.objects.filter(
        unsent, ~Exists(earlier), state=ProvisioningRun.State.QUEUED, created_at__lt=cutoff
    )
    freed.extend(pk for pk in waiting.values_list("pk", flat=True) if pk not in freed)
    return freed


def backfills_reap_stale() -> list[int]:
    """Backfills whose worker died go back to pending; the rerun skips their finished partitions."""
    cutoff = timezone.now() - timedelta(seconds=int(settings.FCC_RUN_STALE_SECONDS))
    freed = []
    for backfill in Backfill.objects.filter(state=Backfill.State.RUNNING, heartbeat_at__lt=cutoff):
        with transaction.atomic():
            stale = Backfill.objects.filter(pk=backfill.pk, state=Backfill.State.RUNNING, heartbeat_at__lt=cutoff)
            if stale.update(state=Backfill.State.PENDING, heartbeat_at=timezone.now()):
                audit_log_write(
                    actor=None,
                    action="backfill.reaped",
                    object_type="backfill",
                    object_id=backfill.pk,
                    environment=backfill.environment.name,
                    after={"previous_worker": backfill.claimed_by},
                )
                freed.append(backfill.pk)
    waiting = Backfill.objects.filter(
        Q(heartbeat_at__isnull=True) | Q(heartbeat_at__lt=cutoff),
        state=Backfill.State.PENDING,
        cancel_requested=False,
        created_at__lt=cutoff,
    )
    freed.extend(pk for pk in waiting.values_list("pk", flat=True) if pk not in freed)
    return freed
