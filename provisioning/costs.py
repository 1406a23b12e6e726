"""What a plan adds to the bill: a model (bytes per column type x rows), priced from settings.FCC_PRICES.

No BigQuery emulator reports real dry-run bytes, so estimates come from this model, not from dry runs.
"""

from collections.abc import Mapping
from typing import Any

from django.conf import settings

from catalog import rules

GIB = 1024**3
TIB = 1024**4
HOURS_PER_MONTH = 730
# Bytes of the key columns of a row: symbol (~9 bytes), ts_minute (8), dte (8).
KEY_BYTES_PER_ROW = 25


def history_rows() -> int:
    return int(settings.FCC_ROWS_PER_TRADING_DAY) * int(getattr(settings, "FCC_HISTORY_TRADING_DAYS", 1750))


def plan_cost(plan: Mapping[str, Any]) -> dict[str, Any]:
    prices = settings.FCC_PRICES
    rows = history_rows()
    added_bytes = 0
    backfill_bytes = 0
    types = {d.bigquery: d for d in rules.DTYPES.values()}
    for step in plan["steps"]:
        if step["kind"] == "add_columns":
            added_bytes += sum(types[c["type"]].bytes_per_value for c in step["columns"]) * rows
        elif step["kind"] == "create_table":
            created = [c for c in plan["changes"] if c["component"] == step["component"] and c["definition"]]
            added_bytes += (
                sum(rules.DTYPES[c["definition"]["dtype"]].bytes_per_value for c in created) + KEY_BYTES_PER_ROW
            ) * rows
        elif step["kind"] == "schedule_backfill":
            change = next(c for c in plan["changes"] if c["feature"] == step["feature"])
            backfill_bytes += (rules.DTYPES[change["definition"]["dtype"]].bytes_per_value + KEY_BYTES_PER_ROW) * rows
    kinds = {s["kind"] for s in plan["steps"]}
    new_online_store = "ensure_dataset" in kinds and "update_online_store" in kinds
    online_nodes = int(getattr(settings, "FCC_ONLINE_MIN_NODES", 2)) if new_online_store else 0
    return {
        "model": "bytes per column type x rows of history; see provisioning/costs.py",
        "history_rows_per_table": rows,
        "storage_bytes_added": added_bytes,
        "storage_usd_per_month": round(added_bytes / GIB * prices["bigquery_active_storage_gib_month"], 4),
        "backfill_scan_bytes": backfill_bytes,
        "backfill_scan_usd": round(backfill_bytes / TIB * prices["bigquery_on_demand_tib_scanned"], 4),
        "online_nodes_added": online_nodes,
        "online_usd_per_month": round(online_nodes * HOURS_PER_MONTH * prices["bigtable_node_hour"], 2),
    }


def environment_costs(environment: Any) -> dict[str, Any]:
    """Per table rows and bytes from the store, estimated monthly storage, the scan of a full
    training_dataset query, online serving node-hours from the autoscaling settings, and what each applied
    change request added (from its plan's estimate)."""
    from catalog.models import ChangeRequest
    from provisioning.backends import offline_store_for

    prices = settings.FCC_PRICES
    live = offline_store_for(environment).describe()
    tables = []
    total_bytes = 0
    for name, table in sorted(live.items()):
        total_bytes += table.num_bytes
        labels = table.labels
        tables.append(
            {
                "table": name,
                "component": labels.get("component", ""),
                "team": labels.get("team", ""),
                "rows": table.num_rows,
                "bytes": table.num_bytes,
                "storage_usd_per_month": round(table.num_bytes / GIB * prices["bigquery_active_storage_gib_month"], 4),
            }
        )
    min_nodes = int(settings.FCC_ONLINE_MIN_NODES)
    max_nodes = int(settings.FCC_ONLINE_MAX_NODES)
    changes = [
        {"change_request": cr.pk, "title": cr.title, "state": cr.state, "cost": cr.plan.get("cost", {})}
        for cr in ChangeRequest.objects.filter(
            environment=environment,
            state__in=[ChangeRequest.State.APPLIED, ChangeRequest.State.APPROVED, ChangeRequest.State.APPLYING],
        ).order_by("-id")[:100]
    ]
    return {
        "environment": environment.name,
        "tables": tables,
        "storage_bytes": total_bytes,
        "storage_usd_per_month": round(total_bytes / GIB * prices["bigquery_active_storage_gib_month"], 4),
        # A training_dataset query without a partition filter reads every column of every table once.
        "training_dataset_scan_bytes": total_bytes,
        "training_dataset_scan_usd": round(total_bytes / TIB * prices["bigquery_on_demand_tib_scanned"], 6),
        "online_node_hours_per_month": {"min": min_nodes * HOURS_PER_MONTH, "max": max_nodes * HOURS_PER_MONTH},
        "online_usd_per_month": {
            "min": round(min_nodes * HOURS_PER_MONTH * prices["bigtable_node_hour"], 2),
            "max": round(max_nodes * HOURS_PER_MONTH * prices["bigtable_node_hour"], 2),
        },
        "prices": prices,
        "change_requests": changes,
    }
