from typing import Any

from django.db import migrations

from catalog.reference import reference_data_ensure

# Audit entries and feature versions are append-only: PostgreSQL refuses UPDATE and DELETE on them outright,
# so not even raw SQL through the application's connection can rewrite history.
APPEND_ONLY_SQL = """
CREATE OR REPLACE FUNCTION fcc_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '% rows are append-only', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER catalog_auditlogentry_append_only BEFORE UPDATE OR DELETE ON catalog_auditlogentry
    FOR EACH ROW EXECUTE FUNCTION fcc_refuse_change();
CREATE TRIGGER catalog_featureversion_append_only BEFORE UPDATE OR DELETE ON catalog_featureversion
    FOR EACH ROW EXECUTE FUNCTION fcc_refuse_change();
"""
DROP_SQL = """
DROP TRIGGER IF EXISTS catalog_auditlogentry_append_only ON catalog_auditlogentry;
DROP TRIGGER IF EXISTS catalog_featureversion_append_only ON catalog_featureversion;
DROP FUNCTION IF EXISTS fcc_refuse_change();
"""


def forwards(apps: Any, schema_editor: Any) -> None:
    reference_data_ensure(apps)
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(APPEND_ONLY_SQL, params=None)


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("catalog", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [migrations.RunPython(forwards, backwards)]
