"""Online sync: the latest values of the online features, from the offline tables into the online store.

Every `instrument_minute` row is its own entity, so the sync writes each row newer than the component's
watermark that is still within its features' TTL. Incremental: the watermark only moves forward, and a
rerun writes the same values again (the store keeps the newest value per feature), so it is safe to repeat.
"""

import datetime as dt
import logging
from collections import defaultdict
from typing import Any

from django.db import transaction
from django.utils import timezone

from catalog.entity_ids import entity_id
from catalog.models import Environment, Feature
from provisioning.backends import offline_store_for, online_store_for
from provisioning.ddl import ident, qualified
from provisioning.models import OnlineSyncState

logger = logging.getLogger(__name__)
BATCH = 5000


def online_sync(*, environment: Environment, now: dt.datetime | None = None) -> dict[str, int]:
    """Syncs every component with online features; returns rows written per component."""
    now = now or timezone.now()
    online = Feature.objects.filter(environment=environment, status=Feature.Status.ACTIVE, online=True)
    by_component: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
    for component, name, column, ttl in online.values_list("component__key", "name", "column_name", "ttl_seconds"):
        by_component[component].append((name, column, ttl))
    offline = offline_store_for(environment)
    store = online_store_for(environment)
    written: dict[str, int] = {}
    live = offline.describe()
    for component, features in sorted(by_component.items()):
        table = f"{component}_features"
        if table not in live:
            continue
        state, _ = OnlineSyncState.objects.get_or_create(environment=environment, component=component)
        horizon = now - dt.timedelta(seconds=max(ttl for _, _, ttl in features))
        since = max(state.watermark, horizon) if state.watermark else horizon
        columns = ", ".join(f"{ident(column)} AS {ident(name)}" for name, column, _ in features)
        sql = (
            # Identifiers are validated by ident()/qualified(); the timestamps are computed here, not given.
            f"SELECT symbol, ts_minute, dte, {columns} "  # noqa: S608
            f"FROM {qualified(environment.gcp_project, environment.bigquery_dataset, table)} "
            f"WHERE DATE(ts_minute) >= DATE('{since:%Y-%m-%d}') AND ts_minute > TIMESTAMP('{since.isoformat()}') "
            f"AND ts_minute <= TIMESTAMP('{now.isoformat()}') ORDER BY ts_minute"
        )
        rows = offline.query(sql)
        names = [name for name, _, _ in features]
        batch: list[tuple[str, dt.datetime, dict[str, Any]]] = []
        newest = state.watermark
        for symbol, ts, dte, *values in rows:
            ts = ts if ts.tzinfo else ts.replace(tzinfo=dt.UTC)
            batch.append((entity_id(symbol, ts, dte), ts, dict(zip(names, values, strict=True))))
            newest = ts if newest is None or ts > newest else newest
            if len(batch) >= BATCH:
                store.write(batch)
                batch = []
        if batch:
            store.write(batch)
        with transaction.atomic():
            OnlineSyncState.objects.filter(pk=state.pk).update(watermark=newest, last_run_at=now, last_rows=len(rows))
        written[component] = len(rows)
    logger.info("online sync", extra={"environment": environment.name, "rows": sum(written.values())})
    return written
