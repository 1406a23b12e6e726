import datetime as dt
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from provisioning.sample_data import (
    SYMBOLS,
    components_from_catalog,
    components_from_spec_dir,
    generate_sample_data,
    recent_start,
)


class Command(BaseCommand):
    help = (
        "Write deterministic synthetic minute-level data for every catalog feature as Parquet in the story's "
        "layout ({root}/{ASSET}/{yyyy}/{mm}/{dd}/{HH}/{component}.parquet)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--root", type=Path, default=None, help="default: FCC_PARQUET_ROOT (DATA_DIR/parquet)")
        parser.add_argument("--days", type=int, default=2, help="trading days to generate (default 2)")
        parser.add_argument(
            "--start",
            type=dt.date.fromisoformat,
            default=None,
            help="first day, YYYY-MM-DD (default: the first of the last DAYS trading sessions that have closed)",
        )
        parser.add_argument("--seed", type=int, default=20250810)
        parser.add_argument("--env", default=None, help="take the features from this environment's catalog")
        parser.add_argument("--symbols", default=",".join(SYMBOLS), help="comma-separated")
        parser.add_argument("--missing-share", type=float, default=0.03, help="share of minutes missing")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["days"] < 1:
            raise CommandError("--days must be at least 1")
        if not 0 <= options["missing_share"] < 1:
            raise CommandError("--missing-share must be in [0, 1)")
        if options["env"]:
            from catalog.models import Environment

            environment = Environment.objects.filter(name=options["env"]).first()
            if environment is None:
                raise CommandError(f"no environment {options['env']!r}")
            components = components_from_catalog(environment)
            if not components:
                raise CommandError(f"environment {options['env']!r} has no features")
        else:
            components = components_from_spec_dir()
        root = options["root"] or Path(settings.FCC_PARQUET_ROOT)
        start = options["start"] or recent_start(options["days"], timezone.now())
        symbols = [s.strip() for s in options["symbols"].split(",") if s.strip()]
        summary = generate_sample_data(
            root,
            components=components,
            start=start,
            days=options["days"],
            seed=options["seed"],
            symbols=symbols,
            missing_share=options["missing_share"],
        )
        self.stdout.write(str(summary))
