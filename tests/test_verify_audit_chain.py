import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from catalog.models import AuditLogEntry

pytestmark = pytest.mark.django_db


def test_the_command_reports_an_intact_chain_and_a_tampered_one(loaded, capsys):
    call_command("verify_audit_chain")
    assert "audit chain intact" in capsys.readouterr().out
    if connection.vendor == "postgresql":
        pytest.skip("PostgreSQL refuses the edit itself (trigger); detection is tested on SQLite")
    entry = AuditLogEntry.objects.order_by("id")[5]
    with connection.cursor() as cursor:
        cursor.execute("UPDATE catalog_auditlogentry SET actor_name = %s WHERE id = %s", ["mallory", entry.pk])
    with pytest.raises(CommandError, match=f"entry {entry.pk}: its content does not match its hash"):
        call_command("verify_audit_chain")
