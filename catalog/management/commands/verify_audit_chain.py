from typing import Any

from django.core.management.base import BaseCommand, CommandError

from catalog.audit import audit_chain_verify


class Command(BaseCommand):
    help = "Walk the audit log's hash chain; exit non-zero when an entry was edited, removed or inserted."

    def handle(self, *args: Any, **options: Any) -> None:
        checked, problems = audit_chain_verify()
        if problems:
            raise CommandError(
                f"{len(problems)} break(s) in the audit chain of {checked} entries:\n" + "\n".join(problems)
            )
        self.stdout.write(f"audit chain intact: {checked} entries")
