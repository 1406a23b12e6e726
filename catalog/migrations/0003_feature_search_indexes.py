from typing import Any

from django.db import migrations

# Trigram indexes for the feature search (`icontains` is `UPPER(col) LIKE UPPER(%text%)`), PostgreSQL only.
CREATE = """
CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX IF NOT EXISTS catalog_feature_name_trgm ON catalog_feature USING gin (UPPER(name) gin_trgm_ops);
CREATE INDEX IF NOT EXISTS catalog_feature_description_trgm ON catalog_feature USING gin (UPPER(description) gin_trgm_ops);
CREATE INDEX IF NOT EXISTS catalog_feature_source_trgm ON catalog_feature USING gin (UPPER(source) gin_trgm_ops);
"""
DROP = """
DROP INDEX IF EXISTS catalog_feature_name_trgm;
DROP INDEX IF EXISTS catalog_feature_description_trgm;
DROP INDEX IF EXISTS catalog_feature_source_trgm;
"""


def forwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("catalog", "0002_reference_data")]

    operations = [migrations.RunPython(forwards, backwards)]
