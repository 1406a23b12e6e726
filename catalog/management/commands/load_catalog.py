from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from catalog.errors import ApplicationError
from catalog.models import Environment
from catalog.services import catalog_load


class Command(BaseCommand):
    help = "Bring environments to the state of the spec files (catalog/specs/). Safe to run again."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--env",
            action="append",
            dest="envs",
            choices=[c[0] for c in Environment.Name.choices],
            help="environment (repeatable; default: all)",
        )
        parser.add_argument("--specs", type=Path, default=settings.FCC_SPECS_DIR, help="directory of spec YAML files")

    def handle(self, *args: Any, **options: Any) -> None:
        envs = options["envs"] or list(Environment.objects.values_list("name", flat=True))
        try:
            results = catalog_load(specs_dir=options["specs"], environment_names=envs)
        except ApplicationError as error:
            lines = [error.message, *(f"  {p.path}: {p.detail} [{p.rule}]" for p in error.problems)]
            raise CommandError("\n".join(lines)) from error
        for env, revision in results.items():
            if revision is None:
                self.stdout.write(f"{env}: already matches the spec files")
            else:
                self.stdout.write(f"{env}: catalog loaded at revision {revision}")
