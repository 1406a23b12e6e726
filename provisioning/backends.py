"""Store backends, picked per environment by a settings string that maps to a class (as Feast does)."""

from typing import Any

from django.conf import settings
from django.utils.module_loading import import_string

from catalog.models import Environment
from provisioning.offline.base import OfflineStore
from provisioning.online.base import OnlineStore

OFFLINE_STORES = {
    "duckdb": "provisioning.offline.duckdb_store.DuckDBOfflineStore",
    "bigquery": "provisioning.offline.bigquery_store.BigQueryOfflineStore",
}
ONLINE_STORES = {
    "local": "provisioning.online.local.LocalOnlineStore",
    "vertex": "provisioning.online.vertex.VertexOnlineStore",
}
ALLOWED_KEYS = {"offline", "online", "offline_options", "online_options"}


def store_config(environment: str) -> dict[str, Any]:
    config: dict[str, Any] = {"offline": settings.FCC_OFFLINE_STORE, "online": settings.FCC_ONLINE_STORE}
    override = settings.FCC_STORES.get(environment, {})
    unknown = set(override) - ALLOWED_KEYS
    if unknown:
        raise ValueError(
            f"FCC_STORES[{environment!r}] has unknown keys {sorted(unknown)}; allowed: {sorted(ALLOWED_KEYS)}"
        )
    config.update(override)
    for key, known in (("offline", OFFLINE_STORES), ("online", ONLINE_STORES)):
        if config[key] not in known:
            raise ValueError(f"{key} store {config[key]!r} for {environment} is not one of {sorted(known)}")
    return config


def offline_store_for(environment: Environment) -> OfflineStore:
    config = store_config(environment.name)
    cls = import_string(OFFLINE_STORES[config["offline"]])
    store: OfflineStore = cls(
        environment=environment.name,
        project=environment.gcp_project,
        dataset=environment.bigquery_dataset,
        region=environment.region,
        options=config.get("offline_options"),
    )
    return store


def online_store_for(environment: Environment) -> OnlineStore:
    config = store_config(environment.name)
    path = ONLINE_STORES[config["online"]]
    if config["online"] == "local" and (settings.REDIS_URL or (config.get("online_options") or {}).get("redis_url")):
        path = "provisioning.online.redis_store.RedisOnlineStore"
    cls = import_string(path)
    store: OnlineStore = cls(
        environment=environment.name,
        project=environment.gcp_project,
        region=environment.region,
        options=config.get("online_options"),
    )
    return store
