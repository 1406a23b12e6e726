import datetime as dt
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from catalog.models import Environment
from provisioning.backfill import backfill_create, backfill_execute
from provisioning.models import Backfill, ProvisioningRun
from provisioning.online_sync import online_sync
from provisioning.runner import run_execute
from provisioning.sample_data import components_from_spec_dir, generate_sample_data, recent_start


class Command(BaseCommand):
    help = (
        "Sample data for a laptop: generate a couple of trading days of Parquet (once), provision the environment, "
        "backfill it and sync the online store. Safe to run again. Runs in this process; a worker receiving the "
        "same runs and backfills finds them claimed or done."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--env", default="dev")
        parser.add_argument("--days", type=int, default=2)

    def handle(self, *args: Any, **options: Any) -> None:
        environment = Environment.objects.get(name=options["env"])
        root = Path(settings.FCC_PARQUET_ROOT)
        if not any(root.glob("*/*/*/*/*/*.parquet")):
            start = recent_start(options["days"], dt.date.today())
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
        synced = online_sync(environment=environment)
        self.stdout.write(f"online sync: {sum(synced.values())} rows")
