from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.models import Environment
from provisioning.export import write_ddl


class Command(BaseCommand):
    help = "Write the environment's DDL (BigQuery, and DuckDB transpiled from it) as files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--env", required=True, choices=[c[0] for c in Environment.Name.choices])
        parser.add_argument("--output", type=Path, default=None, help="default: ddl/<env>/")

    def handle(self, *args: Any, **options: Any) -> None:
        environment = Environment.objects.get(name=options["env"])
        output = options["output"] or Path(settings.BASE_DIR) / "ddl" / environment.name
        try:
            written = write_ddl(environment, output)
        except ValueError as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"wrote {len(written)} files to {output}")
