"""Backup and restore: the catalog database and the embedded stores, lost and brought back (python manage.py
backup --out DIR / restore --from DIR --yes), on whichever database the suite runs on."""

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from catalog.audit import audit_chain_verify
from catalog.models import AuditChainHead, AuditLogEntry, Environment, Feature
from provisioning import runner
from provisioning.backends import offline_store_for, online_store_for
from provisioning.backfill import backfill_create, backfill_execute
from provisioning.drift import drift_detect, drift_findings
from provisioning.models import ProvisioningRun
from tests.test_backfill import write_source

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def provisioned(isolated_stores, users, loaded, tmp_path):
    """dev provisioned from the whole catalog, with two days of c8 backfilled."""
    dev = Environment.objects.get(name="dev")
    run = ProvisioningRun.objects.get(environment=dev, revision=1)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    source = tmp_path / "parquet"
    rows = write_source(source, component="c8")
    backfill = backfill_create(
        user=None, environment=dev, source=str(source), start_date=None, end_date=None, components=["c8"], reason="t"
    )
    assert backfill_execute(backfill_id=backfill.pk, worker="test") == "succeeded"
    assert drift_findings(dev) == []
    return {"dev": dev, "rows": rows}


def _destroy_database() -> None:
    """Loses the audit log and the catalog's features, as a bad migration or an operator's mistake would."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("DROP TABLE catalog_auditlogentry, catalog_featureversion, catalog_feature CASCADE")
        else:
            cursor.execute("PRAGMA foreign_keys = OFF")
            for table in ("catalog_auditlogentry", "catalog_featureversion", "catalog_feature"):
                cursor.execute(f"DROP TABLE {table}")
            cursor.execute("PRAGMA foreign_keys = ON")


def test_backup_then_loss_then_restore_gives_back_a_consistent_catalog_and_stores(provisioned, tmp_path, capsys):
    dev = provisioned["dev"]
    out = tmp_path / "backup"
    call_command("backup", out=out)
    manifest = json.loads((out / "manifest.json").read_text())
    head = AuditChainHead.objects.get(pk=1)
    assert manifest["audit"] == {"last_hash": head.last_hash, "last_entry_id": head.last_entry_id}
    assert manifest["counts"]["features"] == Feature.objects.count() == 932
    assert manifest["counts"]["audit_entries"] == AuditLogEntry.objects.count()
    assert manifest["database"]["vendor"] == connection.vendor
    assert manifest["database"]["migrations"]["catalog"]
    names = {f["name"] for f in manifest["files"]}
    assert names == {manifest["database"]["file"], "offline/dev-offline.duckdb", "online/dev.sqlite3"}
    schema = manifest["environments"]["dev"]["offline_schema"]
    assert sorted(schema["tables"]) == [f"c{i}_features" for i in range(1, 9)]
    assert schema["tables"]["c8_features"]["rows"] == provisioned["rows"]
    assert schema["tables"]["c1_features"]["partition_column"] == "ts_minute"
    assert "training_dataset" in schema["views"]

    # The disaster: tables of the catalog dropped, the offline store's file deleted, the online store emptied.
    offline = offline_store_for(dev)
    online_path = online_store_for(dev).path  # type: ignore[attr-defined]
    offline.path.unlink()  # type: ignore[attr-defined]
    online_path.unlink()
    _destroy_database()
    with pytest.raises(Exception, match="catalog_feature"):
        Feature.objects.count()

    with pytest.raises(CommandError, match="--yes"):
        call_command("restore", source=out)
    call_command("restore", source=out, yes=True)
    output = capsys.readouterr().out
    assert "drift dev: consistent" in output

    counts = manifest["counts"]
    assert Feature.objects.count() == counts["features"]
    assert AuditLogEntry.objects.count() == counts["audit_entries"] + 1  # the restore is itself recorded
    restore = AuditLogEntry.objects.order_by("-id").first()
    assert restore.action == "catalog.restore"
    assert restore.prev_hash == manifest["audit"]["last_hash"]
    checked, problems = audit_chain_verify()
    assert problems == []
    assert checked == counts["audit_entries"] + 1
    call_command("verify_audit_chain")

    dev = Environment.objects.get(name="dev")
    report = drift_detect(environment=dev, trigger="on_demand")
    assert (report.consistent, report.findings, report.error) == (True, [], "")
    live = offline_store_for(dev).describe()
    assert {name: table.num_rows for name, table in live.items()} == {
        name: table["rows"] for name, table in schema["tables"].items()
    }
    assert {name: [[c.name, c.type] for c in t.columns] for name, t in live.items()} == {
        name: table["columns"] for name, table in schema["tables"].items()
    }
    assert online_store_for(dev).describe() is not None


def test_a_backup_of_an_older_schema_is_restored_and_migrated(provisioned, tmp_path, capsys):
    """A backup made before the newest migration (here: the training jobs' heartbeat) is restored, brought up
    to this code's migrations, and reads and verifies as before."""
    from django.db.migrations.recorder import MigrationRecorder

    from provisioning.models import TrainingDataset

    call_command("migrate", "provisioning", "0004", verbosity=0)
    try:
        out = tmp_path / "backup"
        call_command("backup", out=out)
    finally:
        call_command("migrate", verbosity=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "0005_training_heartbeat" not in manifest["database"]["migrations"]["provisioning"]
    _destroy_database()
    call_command("restore", source=out, yes=True)
    output = capsys.readouterr().out
    assert "migrated to this code's schema: provisioning.0005_training_heartbeat" in output
    assert "drift dev: consistent" in output
    applied = MigrationRecorder(connection).migration_qs.filter(app="provisioning").values_list("name", flat=True)
    assert "0005_training_heartbeat" in set(applied)
    assert TrainingDataset.objects.filter(heartbeat_at__isnull=True).count() == 0  # the new column reads
    assert Feature.objects.count() == manifest["counts"]["features"]
    restore = AuditLogEntry.objects.order_by("-id").first()
    assert restore.action == "catalog.restore"
    assert restore.after["migrated"] == ["provisioning.0005_training_heartbeat"]
    assert audit_chain_verify()[1] == []


def test_a_damaged_backup_is_refused_before_anything_is_touched(provisioned, tmp_path):
    out = tmp_path / "backup"
    call_command("backup", out=out)
    duck = out / "offline" / "dev-offline.duckdb"
    data = bytearray(duck.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    duck.write_bytes(bytes(data))
    features = Feature.objects.count()
    entries = AuditLogEntry.objects.count()
    with pytest.raises(CommandError, match="does not match its checksum"):
        call_command("restore", source=out, yes=True)
    assert Feature.objects.count() == features
    assert AuditLogEntry.objects.count() == entries
    with pytest.raises(CommandError, match="not empty"):
        call_command("backup", out=out)


def test_a_backup_waits_for_running_work(provisioned, tmp_path):
    ProvisioningRun.objects.update(state="running")
    with pytest.raises(CommandError, match="running"):
        call_command("backup", out=tmp_path / "busy")
    assert not Path(tmp_path / "busy").exists()
