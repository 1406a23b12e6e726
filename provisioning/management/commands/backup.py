from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.errors import ApplicationError
from provisioning.backup import backup_create, manifest_summary


class Command(BaseCommand):
    help = (
        "Back up the catalog database (pg_dump custom format, or SQLite's online backup) and the embedded stores "
        "(DuckDB after a CHECKPOINT, the local online store) into a new directory, with manifest.json (versions, "
        "counts, the audit chain's head, the stores' schemas, SHA-256 of every file)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--out", type=Path, required=True, help="a new or empty directory")
        parser.add_argument("--force", action="store_true", help="back up even while runs or backfills are running")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            manifest = backup_create(out=options["out"], force=options["force"])
        except ApplicationError as error:
            raise CommandError(error.message) from error
        self.stdout.write(manifest_summary(manifest))
        self.stdout.write(f"backup written to {options['out']}")
