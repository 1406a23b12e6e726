from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.errors import ApplicationError
from catalog.models import Environment
from provisioning.backup import backup_restore, manifest_read, manifest_summary
from provisioning.drift import drift_detect


class Command(BaseCommand):
    help = (
        "Restore the catalog database and the embedded stores from a directory written by `backup`: checksums are "
        "verified first, then the database (pg_restore --clean --single-transaction, or SQLite's backup API) and the "
        "store files are replaced, the audit chain is verified against the manifest's head and drift is detected. "
        "Stop the workers and the console first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="source", type=Path, required=True, help="the backup directory")
        parser.add_argument("--yes", action="store_true", help="confirm: the database and stores are replaced")

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            manifest = manifest_read(options["source"])
            self.stdout.write(manifest_summary(manifest))
            if not options["yes"]:
                raise CommandError("this replaces the catalog database and the stores; run again with --yes")
            summary = backup_restore(source=options["source"])
        except ApplicationError as error:
            raise CommandError(error.message) from error
        if summary["migrated"]:
            self.stdout.write(f"migrated to this code's schema: {', '.join(summary['migrated'])}")
        self.stdout.write(f"audit chain intact: {summary['audit_entries_checked']} entries, head as in the backup")
        for key, expected in sorted(summary["expected_counts"].items()):
            self.stdout.write(f"{key}: {summary['counts'][key]} (backup: {expected})")
        for environment in Environment.objects.filter(revision__gt=0).order_by("id"):
            report = drift_detect(environment=environment, trigger="restore")
            state = "consistent" if report.consistent else f"{len(report.findings)} finding(s) {report.error}".strip()
            self.stdout.write(f"drift {environment.name}: {state}")
