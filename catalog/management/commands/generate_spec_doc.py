from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from catalog.docs import render_spec_doc


class Command(BaseCommand):
    help = "Write docs/feature-store-spec.md from the spec files."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--output", type=Path, default=Path(settings.BASE_DIR) / "docs" / "feature-store-spec.md")

    def handle(self, *args: Any, **options: Any) -> None:
        options["output"].write_text(render_spec_doc(settings.FCC_SPECS_DIR), encoding="utf-8")
        self.stdout.write(f"wrote {options['output']}")
