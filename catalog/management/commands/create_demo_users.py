from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction
from django.utils import timezone

from api.models import ApiToken
from catalog.models import Component, TeamMembership

DEMO_PASSWORD = "demo-password"  # noqa: S105 - demo users exist on laptops only (make run)


class Command(BaseCommand):
    help = "Create demo users (admin, reviewer, viewer, one owner per component team, a CI registrar) and print them."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--password", default=DEMO_PASSWORD)

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        user_model = get_user_model()
        password = options["password"]
        rows = []

        def ensure(username: str, *, superuser: bool = False, group: str | None = None) -> Any:
            user, created = user_model.objects.get_or_create(
                username=username, defaults={"is_staff": superuser, "is_superuser": superuser}
            )
            if created:
                user.set_password(password)
                user.save()
            if group:
                user.groups.add(Group.objects.get(name=group))
            return user

        ensure("admin", superuser=True)
        rows.append(("admin", "admin (superuser)"))
        ensure("reviewer", group="reviewer")
        rows.append(("reviewer", "reviewer"))
        ensure("viewer", group="viewer")
        rows.append(("viewer", "viewer"))
        for component in Component.objects.select_related("owner"):
            username = f"owner-{component.key}"
            user = ensure(username)
            TeamMembership.objects.get_or_create(
                team=component.owner, user=user, defaults={"role": TeamMembership.Role.OWNER}
            )
            rows.append((username, f"owner of {component.owner.slug} ({component.key})"))
        registrar = ensure("ci-registrar", group="registrar")
        rows.append(("ci-registrar", "registrar (CI identity)"))
        # A fresh demo token each run (the secret is only ever shown once); the previous one is revoked.
        ApiToken.objects.filter(user=registrar, name="demo", revoked_at__isnull=True).update(revoked_at=timezone.now())
        _, secret = ApiToken.issue(user=registrar, name="demo")
        self.stdout.write(f"Demo users (password for all: {password}):")
        for username, role in rows:
            self.stdout.write(f"  {username:<14} {role}")
        self.stdout.write(f"API token for ci-registrar: {secret}")
