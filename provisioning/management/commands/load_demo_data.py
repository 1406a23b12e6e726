import argparse
import datetime as dt
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db.models import Max
from django.utils import timezone

from catalog.models import Environment
from catalog.rules import ttl_format
from provisioning.backfill import backfill_create, backfill_execute
from provisioning.models import Backfill, OnlineSyncState, ProvisioningRun
from provisioning.online_sync import online_sync
from provisioning.runner import run_execute
from provisioning.sample_data import components_from_spec_dir, generate_sample_data, recent_start


def _aware_datetime(value: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 date and time") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{value!r} has no UTC offset (e.g. +05:30 or Z)")
    return moment


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: at least 1")
    return number


class Command(BaseCommand):
    help = (
        "Sample data for a laptop: generate a couple of trading days of Parquet (once), provision the environment, "
        "backfill it and sync the online store. Safe to run again. Runs in this process; a worker receiving the "
        "same runs and backfills finds them claimed or done."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--env", default="dev")
        parser.add_argument("--days", type=_positive, default=2, help="trading days of sample data (default 2)")
        parser.add_argument(
            "--as-of",
            type=_aware_datetime,
            default=None,
            help="the moment the sample is for, ISO 8601 with a UTC offset (default: now): the sample covers the "
            "last DAYS trading sessions closed then, and the online sync keeps what the TTLs cover then",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        environment = Environment.objects.get(name=options["env"])
        now = options["as_of"] or timezone.now()
        root = Path(settings.FCC_PARQUET_ROOT)
        if not any(root.glob("*/*/*/*/*/*.parquet")):
            start = recent_start(options["days"], now)
            summary = generate_sample_data(
                root, components=components_from_spec_dir(), start=start, days=options["days"]
            )
            self.stdout.write(f"sample data: {summary}")
        for run in ProvisioningRun.objects.filter(environment=environment, state=ProvisioningRun.State.QUEUED).order_by(
            "revision"
        ):
            state = run_execute(run_id=run.pk, worker="load_demo_data")
            self.stdout.write(f"provisioning run {run.pk} (revision {run.revision}): {state}")
        if not Backfill.objects.filter(
            environment=environment, reason="sample data", state=Backfill.State.SUCCEEDED
        ).exists():
            backfill = Backfill.objects.filter(
                environment=environment, reason="sample data", state=Backfill.State.PENDING
            ).first()
            if backfill is None:
                # A set: DISTINCT over a queryset with a default ordering keeps one row per feature.
                components = sorted(set(environment.features.values_list("component__key", flat=True)))
                backfill = backfill_create(
                    user=None,
                    environment=environment,
                    source=str(root),
                    start_date=None,
                    end_date=None,
                    components=components,
                    reason="sample data",
                )
            self.stdout.write(
                f"backfill {backfill.pk}: {backfill_execute(backfill_id=backfill.pk, worker='load_demo_data')}"
            )
        synced = online_sync(environment=environment, now=now)
        self.stdout.write(f"online sync: {sum(synced.values())} rows")
        ttl = environment.features.filter(online=True).aggregate(longest=Max("ttl_seconds"))["longest"]
        newest = OnlineSyncState.objects.filter(environment=environment).aggregate(newest=Max("watermark"))["newest"]
        if ttl and (newest is None or newest < now - dt.timedelta(seconds=ttl)):
            # Minute-level features live 48 h online: from Sunday afternoon to Monday's close (and after a
            # holiday) the last closed session is older than that, and nothing is left to serve.
            self.stdout.write(
                f"no online feature value is newer than {now - dt.timedelta(seconds=ttl):%Y-%m-%d %H:%M %z} (the "
                f"longest online TTL, {ttl_format(ttl)}, before {now:%Y-%m-%d %H:%M %z}): online reads "
                "answer every feature missing until newer data is backfilled and synced"
            )
