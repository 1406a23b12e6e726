from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from django.utils import timezone

from api.models import ApiToken
from catalog.audit import audit_log_write


class Command(BaseCommand):
    help = "Issue an API token for USERNAME and print it (only its hash is stored)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--name", default="cli")
        parser.add_argument("--expires-days", type=int, default=None)

    def handle(self, *args: Any, **options: Any) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"user {options['username']!r} does not exist")
        expires = timezone.now() + timedelta(days=options["expires_days"]) if options["expires_days"] else None
        with transaction.atomic():
            token, secret = ApiToken.issue(user=user, name=options["name"], expires_at=expires)
            audit_log_write(
                actor=None,
                action="api_token.issue",
                object_type="api_token",
                object_id=token.pk,
                after={"user": user.get_username(), "name": token.name, "prefix": token.prefix},
            )
        self.stdout.write(secret)
