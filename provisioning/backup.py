"""Backup and restore of the catalog database and the embedded stores, with a manifest.

A backup directory holds:
- the catalog database: `catalog.pgdump` (pg_dump, custom format) on PostgreSQL, `catalog.sqlite3` (SQLite's
  online backup API, a consistent copy of a live file) on SQLite;
- per environment on the embedded backends: the DuckDB offline store's file (`offline/{env}-offline.duckdb`,
  copied after a CHECKPOINT while this process holds its write lock, so no writer is mid-transaction; its
  `_fcc_meta` schema holds the partitioning and clustering metadata) and the local online store
  (`online/{env}.sqlite3`, SQLite's backup API). BigQuery, Vertex AI and Redis are not copied: they keep their
  own history (BigQuery time travel and table snapshots) or are re-filled by the online sync;
- `manifest.json`: versions, the database's migrations, row counts, the audit chain's head, each store's schema
  (tables, columns, partitioning, views) and row counts, and the SHA-256 of every file.

A restore checks every checksum before it touches anything, refuses while a worker holds a store, restores the
database (pg_restore --clean --single-transaction; SQLite's backup API), then the store files, verifies the
audit chain against the manifest's head and records the restore in the audit log.
"""

import hashlib
import json
import logging
import os
import platform
import shutil
import sqlite3
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import django
import duckdb
from django.db import connection, connections, transaction
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from catalog.audit import audit_chain_verify, audit_log_write
from catalog.errors import ApplicationError, Conflict
from catalog.models import AuditChainHead, AuditLogEntry, ChangeRequest, Environment, Feature, FeatureVersion
from provisioning.backends import offline_store_for, online_store_for, store_config
from provisioning.models import Backfill, ProvisioningRun

logger = logging.getLogger(__name__)
FORMAT = 1
MANIFEST = "manifest.json"
CHUNK = 1 << 20


class BackupError(ApplicationError):
    status = 400
    code = "backup_error"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _tool_version(tool: str) -> str:
    found = shutil.which(tool)
    if found is None:
        return "missing"
    result = subprocess.run([found, "--version"], capture_output=True, text=True, check=False, timeout=30)  # noqa: S603
    return result.stdout.strip()


def _pg_environment() -> tuple[list[str], dict[str, str]]:
    """Connection arguments for pg_dump / pg_restore from Django's (test-aware) settings; the password by env."""
    db = connection.settings_dict
    args = ["--host", str(db.get("HOST") or "127.0.0.1"), "--port", str(db.get("PORT") or 5432)]
    args += ["--username", str(db.get("USER") or "postgres"), "--dbname", str(db["NAME"])]
    env = dict(os.environ)
    if db.get("PASSWORD"):
        env["PGPASSWORD"] = str(db["PASSWORD"])
    return args, env


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=3600)  # noqa: S603
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def _counts() -> dict[str, int]:
    from django.contrib.auth import get_user_model

    return {
        "audit_entries": AuditLogEntry.objects.count(),
        "features": Feature.objects.count(),
        "feature_versions": FeatureVersion.objects.count(),
        "change_requests": ChangeRequest.objects.count(),
        "provisioning_runs": ProvisioningRun.objects.count(),
        "backfills": Backfill.objects.count(),
        "users": get_user_model().objects.count(),
    }


def _audit_head() -> dict[str, Any]:
    head = AuditChainHead.objects.filter(pk=1).first()
    return {
        "last_hash": head.last_hash if head else "",
        "last_entry_id": head.last_entry_id if head else None,
    }


def _migrations() -> dict[str, list[str]]:
    applied: dict[str, list[str]] = {}
    for app, name in MigrationRecorder(connection).migration_qs.order_by("app", "name").values_list("app", "name"):
        applied.setdefault(app, []).append(name)
    return applied


def _offline_schema(store: Any) -> dict[str, Any]:
    """The store's tables (columns, partitioning, clustering), views and row counts, as drift sees them."""
    tables = store.describe()
    return {
        "tables": {
            name: {
                "columns": [[c.name, c.type] for c in table.columns],
                "partition_column": table.partition_column,
                "cluster_by": list(table.cluster_by),
                "require_partition_filter": table.require_partition_filter,
                "rows": table.num_rows,
            }
            for name, table in sorted(tables.items())
        },
        "views": store.views(),
    }


def _file_entry(root: Path, path: Path) -> dict[str, Any]:
    return {"sha256": _sha256(path), "bytes": path.stat().st_size, "name": str(path.relative_to(root))}


def backup_create(*, out: Path, force: bool = False) -> dict[str, Any]:
    """Writes a backup into `out` (new or empty); returns the manifest."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty; back up into a new directory")
    busy = ProvisioningRun.objects.filter(state=ProvisioningRun.State.RUNNING).count()
    busy += Backfill.objects.filter(state=Backfill.State.RUNNING).count()
    if busy and not force:
        raise Conflict(
            f"{busy} run(s) or backfill(s) are running: the database and the stores would disagree; wait for them "
            "or stop the workers (--force backs up anyway)"
        )
    out.mkdir(parents=True, exist_ok=True)
    files: list[dict[str, Any]] = []
    vendor = connection.vendor
    if vendor == "postgresql":
        args, env = _pg_environment()
        dump = out / "catalog.pgdump"
        _run(["pg_dump", *args, "--format=custom", "--no-owner", "--no-privileges", "--file", str(dump)], env)
    elif vendor == "sqlite":
        dump = out / "catalog.sqlite3"
        source = sqlite3.connect(str(connection.settings_dict["NAME"]), timeout=30)
        target = sqlite3.connect(str(dump))
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
    else:
        raise BackupError(f"no backup method for the {vendor} database")
    files.append(_file_entry(out, dump))

    environments: dict[str, Any] = {}
    for environment in Environment.objects.order_by("id"):
        config = store_config(environment.name)
        entry: dict[str, Any] = {"revision": environment.revision, "offline": config["offline"]}
        entry["online"] = config["online"]
        if config["offline"] == "duckdb":
            offline: Any = offline_store_for(environment)
            if offline.path.exists():
                target_path = out / "offline" / offline.path.name
                target_path.parent.mkdir(exist_ok=True)
                # A read-write connection holds the file's lock: no other process writes while it is copied.
                with offline.connect() as duck:
                    duck.execute("CHECKPOINT")
                    shutil.copyfile(offline.path, target_path)
                entry["offline_file"] = str(target_path.relative_to(out))
                entry["offline_schema"] = _offline_schema(offline)
                files.append(_file_entry(out, target_path))
        else:
            entry["offline_note"] = "not copied: BigQuery keeps its own history (time travel, table snapshots)"
        online: Any = online_store_for(environment) if config["online"] == "local" else None
        online_path = getattr(online, "path", None)  # the Redis variant of the local store has no file
        if isinstance(online_path, Path):
            if online_path.exists():
                target_path = out / "online" / online_path.name
                target_path.parent.mkdir(exist_ok=True)
                source = sqlite3.connect(str(online_path), timeout=30)
                target = sqlite3.connect(str(target_path))
                try:
                    source.backup(target)
                finally:
                    target.close()
                    source.close()
                entry["online_file"] = str(target_path.relative_to(out))
                files.append(_file_entry(out, target_path))
        else:
            entry["online_note"] = "not copied: Vertex AI or Redis; re-filled from the offline store by the online sync"
        environments[environment.name] = entry

    manifest = {
        "format": FORMAT,
        "created_at": timezone.now().isoformat(),
        "versions": {
            "feature-catalog-console": _version("feature-catalog-console"),
            "python": platform.python_version(),
            "django": django.get_version(),
            "duckdb": duckdb.__version__,
            "sqlite": sqlite3.sqlite_version,
            **({"postgresql": connection.cursor().connection.info.server_version} if vendor == "postgresql" else {}),
            **({"pg_dump": _tool_version("pg_dump")} if vendor == "postgresql" else {}),
        },
        "database": {"vendor": vendor, "file": dump.name, "migrations": _migrations()},
        "counts": _counts(),
        "audit": _audit_head(),
        "environments": environments,
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    logger.info("backup written", extra={"out": str(out), "files": len(files)})
    return manifest


def manifest_read(source: Path) -> dict[str, Any]:
    """The manifest, after every file's checksum was verified."""
    path = Path(source) / MANIFEST
    if not path.exists():
        raise BackupError(f"{path} does not exist: not a backup directory")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"backup format {manifest.get('format')!r} is not {FORMAT}")
    for entry in manifest["files"]:
        file = Path(source) / entry["name"]
        if not file.exists():
            raise BackupError(f"{entry['name']} is missing from the backup")
        if _sha256(file) != entry["sha256"]:
            raise BackupError(f"{entry['name']} does not match its checksum: the backup is damaged")
    return manifest


def _duckdb_free(path: Path) -> None:
    if not path.exists():
        return
    try:
        duckdb.connect(str(path)).close()
    except duckdb.IOException as error:
        raise Conflict(f"{path} is in use ({error}); stop the workers and the console before restoring") from error


def backup_restore(*, source: Path) -> dict[str, Any]:
    """Restores the database and the embedded stores from `source`; returns a summary of the checks."""
    source = Path(source)
    manifest = manifest_read(source)
    vendor = connection.vendor
    if manifest["database"]["vendor"] != vendor:
        raise BackupError(
            f"the backup is of a {manifest['database']['vendor']} database; this console uses {vendor} "
            "(move between them with dumpdata/loaddata)"
        )
    known = _migrations_on_disk()
    unknown = sorted(
        f"{app}.{name}"
        for app, names in manifest["database"]["migrations"].items()
        for name in names
        if app in known and name not in known[app]
    )
    if unknown:
        raise BackupError(f"the backup has migrations this code does not know ({', '.join(unknown[:5])}); upgrade")
    # The stores' files must be free before anything is replaced; the environments are named in the manifest.
    offline_targets: list[tuple[Path, Path]] = []
    online_targets: list[tuple[Path, Path]] = []
    for name, entry in manifest["environments"].items():
        # An unsaved row: the store paths depend on the name and FCC_STORES only (the table may be gone).
        environment = Environment(name=name, gcp_project="", region="")
        if "offline_file" in entry:
            if store_config(name)["offline"] != "duckdb":
                raise BackupError(f"{name}'s offline store is no longer DuckDB; the backup's file cannot go there")
            path = getattr(offline_store_for(environment), "path", None)
            if not isinstance(path, Path):
                raise BackupError(f"{name}'s offline store is no longer DuckDB; the backup's file cannot go there")
            _duckdb_free(path)
            offline_targets.append((source / entry["offline_file"], path))
        if "online_file" in entry:
            local = store_config(name)["online"] == "local"
            online_path = getattr(online_store_for(environment), "path", None) if local else None
            if not isinstance(online_path, Path):
                raise BackupError(
                    f"{name}'s online store is no longer the local one; the backup's file cannot go there"
                )
            online_targets.append((source / entry["online_file"], online_path))

    connections.close_all()
    dump = source / manifest["database"]["file"]
    if vendor == "postgresql":
        args, env = _pg_environment()
        _run(
            [
                "pg_restore", *args, "--clean", "--if-exists", "--no-owner", "--no-privileges",
                "--single-transaction", "--exit-on-error", str(dump),
            ],
            env,
        )  # fmt: skip
    else:
        backup = sqlite3.connect(str(dump))
        live = sqlite3.connect(str(connection.settings_dict["NAME"]), timeout=30)
        try:
            backup.backup(live)
        finally:
            live.close()
            backup.close()

    for backup_file, target in offline_targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        for stale in (target, target.with_name(target.name + ".wal")):
            stale.unlink(missing_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".restore-", delete=False) as handle:
            temporary = Path(handle.name)
        shutil.copyfile(backup_file, temporary)
        os.replace(temporary, target)
    for backup_file, target in online_targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = sqlite3.connect(str(backup_file))
        live = sqlite3.connect(str(target), timeout=30)
        try:
            backup.backup(live)
        finally:
            live.close()
            backup.close()

    # A backup made before this code's newest migrations is brought up to them before anything reads it.
    behind = sorted(
        f"{app}.{name}"
        for app, names in known.items()
        for name in names
        if name not in manifest["database"]["migrations"].get(app, ())
    )
    if behind:
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        logger.info("restored database migrated", extra={"migrations": behind})
    checked, problems = audit_chain_verify()
    head = _audit_head()
    if head["last_hash"] != manifest["audit"]["last_hash"]:
        problems.append(
            f"the restored chain's head {head['last_hash'][:12]} is not the backup's "
            f"{manifest['audit']['last_hash'][:12]}"
        )
    if problems:
        raise BackupError("the restored audit chain does not verify: " + "; ".join(problems[:10]))
    counts = _counts()
    with transaction.atomic():
        audit_log_write(
            actor=None,
            action="catalog.restore",
            object_type="backup",
            object_id=manifest["created_at"][:64],
            after={
                "created_at": manifest["created_at"],
                "audit_head": manifest["audit"],
                "counts": counts,
                "migrated": behind,
            },
        )
    summary = {
        "audit_entries_checked": checked,
        "counts": counts,
        "expected_counts": manifest["counts"],
        "migrated": behind,
    }
    logger.info("backup restored", extra={"source": str(source), **summary})
    return summary


def _migrations_on_disk() -> dict[str, set[str]]:
    from django.db.migrations.loader import MigrationLoader

    loader = MigrationLoader(None, ignore_no_migrations=True)
    names: dict[str, set[str]] = {}
    for app, name in loader.disk_migrations:
        names.setdefault(app, set()).add(name)
    return names


def manifest_summary(manifest: dict[str, Any]) -> str:
    """A few lines for the command's output."""
    lines = [f"backup of {manifest['created_at']} ({manifest['database']['vendor']})"]
    lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in sorted(manifest["counts"].items())))
    lines.append(f"audit head: entry {manifest['audit']['last_entry_id']} {manifest['audit']['last_hash'][:16]}")
    for name, entry in manifest["environments"].items():
        stores = [f"offline {entry['offline']}", f"online {entry['online']}"]
        copied = [k for k in ("offline_file", "online_file") if k in entry]
        lines.append(f"{name} r{entry['revision']}: {', '.join(stores)}; copied {', '.join(copied) or 'nothing'}")
    return "\n".join(lines)
