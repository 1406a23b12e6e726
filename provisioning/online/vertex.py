"""Vertex AI Feature Store as the online store, through the current v1 API (Feature Registry + online stores).

Never the legacy Featurestore/EntityType API: it stops being served on 2027-02-17.

Resource layout for an environment `{env}` (IDs validated against Vertex's rules before any call):

- FeatureOnlineStore `market_regime_{env}` with Bigtable online serving, autoscaling from
  FCC_ONLINE_MIN_NODES / FCC_ONLINE_MAX_NODES / FCC_ONLINE_CPU_TARGET.
- FeatureGroup `market_regime_{env}_{component}` per component of the catalog, registered over the BigQuery
  view `{project}.market_regime_{env}.{component}_features_online` (see `online_source_view_sql`): the
  component table's current column of every feature under the feature's name, entity ID column `entity_id`,
  time series on `feature_timestamp`.
- Feature `{feature}` in its group, one per feature of the catalog (`OnlineViewSpec.registered`, online or not),
  reading the view column of the same name. Missing ones are created with BatchCreateFeatures, at most
  FEATURE_BATCH a request, after one paged ListFeatures per group (the full catalog is 8 groups and 932 features:
  about 20 calls, not 932). Vertex keeps no type or TTL for Feature Registry features, so the catalog's dtype and
  TTL ride along as labels (`fcc_dtype`, `fcc_ttl_seconds`): that is what describe() and read() use.
- FeatureView `{view.name}` under the online store, a Feature Registry source over the online features only,
  synced by cron (option `sync_cron`).

Why a view and not the component table itself: Vertex entity ID columns must hold STRING or INT64 values
(https://cloud.google.com/vertex-ai/docs/featurestore/latest/prepare-data-source, "Entity ID column"), and
`ts_minute` is a TIMESTAMP, so `entity_id_columns=["symbol", "ts_minute", "dte"]` cannot key the table; a
composite key would also make every reader rebuild the parts instead of using the catalog's entity id. The
view computes `entity_id` exactly as `${symbol}_${yyyymmddHHMM}_${dte}`, so fetches use the catalog's id
unchanged, and it keeps only the rows younger than the longest TTL of the component's online features: that is a
partition filter (the tables require one) and bounds what every sync reads. The history stays in the table and
the training_dataset view; the group's features describe it, and serve from the window.

update() never deletes: a feature taken out of the view stays registered in its group (it still describes a
live BigQuery column), and a group left without online features stays too. Immutable differences (a group's
source, a feature's column, a store that is not Bigtable) stop with a PermanentStoreError for a person.
"""

import re
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import requests
from django.conf import settings
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import aiplatform_v1
from google.cloud.aiplatform_v1.services.feature_online_store_admin_service.transports.grpc import (
    FeatureOnlineStoreAdminServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.feature_online_store_service.transports.grpc import (
    FeatureOnlineStoreServiceGrpcTransport,
)
from google.cloud.aiplatform_v1.services.feature_registry_service.transports.grpc import (
    FeatureRegistryServiceGrpcTransport,
)

from provisioning.ddl import ENTITY_ID_COLUMN, SOURCE_SUFFIX, TIMESTAMP_COLUMN
from provisioning.errors import PermanentStoreError, TransientStoreError
from provisioning.offline.base import StepOutcome
from provisioning.online.base import OnlineFeature, OnlineStore, OnlineValue, OnlineViewSpec

ID_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*$")
ID_MAX_LENGTH = {"FeatureOnlineStore": 60, "FeatureView": 60, "FeatureGroup": 128, "Feature": 128}
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
CRON = re.compile(r"^((CRON_TZ|TZ)=[A-Za-z0-9_+\-/]+ )?[0-9*/,\-]+( [0-9*/,\-A-Za-z]+){4}$")

ENTITY_ID_TEMPLATE = "${symbol}_${yyyymmddHHMM}_${dte}"
IAM_ROLE = "roles/aiplatform.user"
DIRECT_WRITE_BATCH = 100
# Features per BatchCreateFeatures request. Vertex documents no limit for feature groups; this keeps each
# request and its long-running operation small (c6's 220 features take 3 requests).
FEATURE_BATCH = 100

DTYPE_VALUE_FIELD = {
    "bool": "bool_value",
    "int64": "int64_value",
    "numeric": "double_value",
    "float64": "double_value",
    "string": "string_value",
}
LABEL_DTYPE = "fcc_dtype"
LABEL_TTL = "fcc_ttl_seconds"
LABEL_COMPONENT = "fcc_component"
LABEL_ENVIRONMENT = "fcc_environment"
LABEL_ENTITY_TYPE = "fcc_entity_type"
LABEL_MANAGED = "managed_by"
MANAGED_BY = "feature-catalog-console"

T = TypeVar("T")


@dataclass(frozen=True)
class VertexOptions:
    """FCC_STORES[env]["online_options"] for the vertex backend; unknown keys are refused."""

    # Defaults to the regional endpoint `{region}-aiplatform.googleapis.com`. An `http://` endpoint is a local
    # fake: plaintext, anonymous credentials (real credentials are never sent over plaintext).
    api_endpoint: str | None = None
    # FeatureViewDirectWrite (write()) is a bidirectional gRPC stream that the REST transport does not offer.
    transport: Literal["grpc", "rest"] = "grpc"
    sync_cron: str = "*/15 * * * *"
    # Creating a Bigtable-backed online store takes minutes; past this bound the step fails transiently and
    # a rerun finds the resource by its ID.
    operation_timeout_seconds: float = 1200.0
    request_timeout_seconds: float = 60.0

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> "VertexOptions":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise PermanentStoreError(
                f"unknown vertex online_options {unknown}; allowed: {sorted(known)}", action="fix FCC_STORES"
            )
        values = dict(raw)
        endpoint = values.get("api_endpoint")
        if endpoint is not None and (not isinstance(endpoint, str) or not endpoint):
            raise PermanentStoreError("vertex option api_endpoint must be a non-empty string")
        if values.get("transport", "grpc") not in ("grpc", "rest"):
            raise PermanentStoreError(f"vertex option transport must be 'grpc' or 'rest', not {values['transport']!r}")
        cron = values.get("sync_cron", cls.sync_cron)
        if not isinstance(cron, str) or not CRON.match(cron):
            raise PermanentStoreError(
                f"vertex option sync_cron {cron!r} is not a cron schedule (five fields, optional CRON_TZ=... prefix)"
            )
        for name in ("operation_timeout_seconds", "request_timeout_seconds"):
            if name in values:
                number = values[name]
                if isinstance(number, bool) or not isinstance(number, int | float) or number <= 0:
                    raise PermanentStoreError(f"vertex option {name} must be a positive number, not {number!r}")
                values[name] = float(number)
        return cls(**values)


def resource_id_check(kind: str, value: str) -> str:
    """`value` if Vertex accepts it as the ID of a `kind`; a PermanentStoreError naming the ID and rule if not."""
    limit = ID_MAX_LENGTH[kind]
    if not ID_PATTERN.match(value):
        raise PermanentStoreError(
            f"Vertex AI {kind} ID {value!r} breaks the rule ^[a-z_][a-z0-9_]*$ "
            "(lowercase letters, digits and underscores, not starting with a digit)",
            action=f"rename the {kind}",
        )
    if len(value) > limit:
        raise PermanentStoreError(
            f"Vertex AI {kind} ID {value!r} has {len(value)} characters; the rule is at most {limit}",
            action=f"rename the {kind}",
        )
    return value


def _leaf(name: str) -> str:
    # Vertex answers with the project number in resource names; compare IDs, never whole names.
    return name.rsplit("/", 1)[-1]


def _label_check(owner: str, labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise PermanentStoreError(
                f"label {key}={value!r} of {owner} breaks Vertex's label rule "
                "(lowercase letters, digits, _ and -; at most 63 characters)"
            )


def _merged_labels(live: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str] | None:
    """The live labels with ours applied, or None when ours are already there (others' labels are kept)."""
    merged = dict(live)
    merged.update(wanted)
    return None if merged == dict(live) else merged


def _to_dict(message: Any) -> dict[str, Any]:
    data: dict[str, Any] = type(message).to_dict(message, preserving_proto_field_name=True)
    return data


class VertexOnlineStore(OnlineStore):
    kind = "vertex"

    def __init__(self, *, environment: str, project: str, region: str, options: dict[str, Any] | None = None):
        super().__init__(environment=environment, project=project, region=region, options=options)
        self.settings = VertexOptions.parse(self.options)
        self._lock = threading.Lock()
        self._clients: tuple[Any, Any, Any] | None = None
        self._served: OnlineViewSpec | None = None

    # Names ---------------------------------------------------------------------------------------------------

    @property
    def location(self) -> str:
        return f"projects/{self.project}/locations/{self.region}"

    @property
    def dataset(self) -> str:
        return f"market_regime_{self.environment}"

    @property
    def online_store_id(self) -> str:
        return f"market_regime_{self.environment}"

    def feature_group_id(self, component: str) -> str:
        return f"market_regime_{self.environment}_{component}"

    def source_uri(self, component: str) -> str:
        return f"bq://{self.project}.{self.dataset}.{component}{SOURCE_SUFFIX}"

    def _online_store_name(self) -> str:
        return f"{self.location}/featureOnlineStores/{self.online_store_id}"

    def _group_name(self, group_id: str) -> str:
        return f"{self.location}/featureGroups/{group_id}"

    def _view_name(self, view_id: str) -> str:
        return f"{self._online_store_name()}/featureViews/{view_id}"

    # Clients -------------------------------------------------------------------------------------------------

    def _client_set(self) -> tuple[Any, Any, Any]:
        """(registry, online store admin, online serving) clients, built on first use."""
        with self._lock:
            if self._clients is None:
                self._clients = self._build_clients()
            return self._clients

    def _build_clients(self) -> tuple[Any, Any, Any]:
        endpoint = self.settings.api_endpoint or f"{self.region}-aiplatform.googleapis.com"
        plaintext = endpoint.startswith("http://")
        classes = (
            aiplatform_v1.FeatureRegistryServiceClient,
            aiplatform_v1.FeatureOnlineStoreAdminServiceClient,
            aiplatform_v1.FeatureOnlineStoreServiceClient,
        )
        if self.settings.transport == "rest":
            kwargs: dict[str, Any] = {"transport": "rest", "client_options": ClientOptions(api_endpoint=endpoint)}
            if plaintext:
                kwargs["credentials"] = AnonymousCredentials()  # type: ignore[no-untyped-call]
            registry, admin, serving = (cls(**kwargs) for cls in classes)
            return registry, admin, serving
        if plaintext:
            # client_options alone would open TLS: a plaintext gRPC endpoint needs an insecure channel.
            import grpc  # type: ignore[import-untyped]

            channel = grpc.insecure_channel(endpoint.removeprefix("http://"))
            return (
                aiplatform_v1.FeatureRegistryServiceClient(
                    transport=FeatureRegistryServiceGrpcTransport(channel=channel)
                ),
                aiplatform_v1.FeatureOnlineStoreAdminServiceClient(
                    transport=FeatureOnlineStoreAdminServiceGrpcTransport(channel=channel)
                ),
                aiplatform_v1.FeatureOnlineStoreServiceClient(
                    transport=FeatureOnlineStoreServiceGrpcTransport(channel=channel)
                ),
            )
        options = ClientOptions(api_endpoint=endpoint)
        registry, admin, serving = (cls(transport="grpc", client_options=options) for cls in classes)
        return registry, admin, serving

    # Errors and operations -----------------------------------------------------------------------------------

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        """Google errors as store errors: transient ones may pass on retry, the rest need a person."""
        try:
            yield
        except (
            gexc.TooManyRequests,
            gexc.ServiceUnavailable,
            gexc.InternalServerError,
            gexc.BadGateway,
            gexc.GatewayTimeout,
            gexc.Aborted,
        ) as error:
            raise TransientStoreError(f"Vertex AI {what}: {error.message or error}") from error
        except gexc.Forbidden as error:
            raise PermanentStoreError(
                f"Vertex AI {what} was refused ({error.message or error}); the provisioning identity needs "
                f"{IAM_ROLE} on project {self.project}",
                action=f"grant {IAM_ROLE}",
            ) from error
        except gexc.GoogleAPICallError as error:
            raise PermanentStoreError(f"Vertex AI {what} failed: {error.message or error}") from error
        except FutureTimeoutError as error:
            raise TransientStoreError(
                f"Vertex AI {what} still running after {self.settings.operation_timeout_seconds:g} s; "
                "a rerun finds it by its ID"
            ) from error
        except (requests.ConnectionError, requests.Timeout) as error:
            raise TransientStoreError(
                f"Vertex AI {what}: cannot reach {self.settings.api_endpoint}: {error}"
            ) from error

    def _get(self, what: str, call: Callable[..., T], name: str) -> T | None:
        with self._calling(f"get {what} {name}"):
            try:
                return call(name=name, timeout=self.settings.request_timeout_seconds)
            except gexc.NotFound:
                return None

    def _wait(self, what: str, start: Callable[[], Any]) -> Any:
        with self._calling(what):
            operation = start()
            return operation.result(timeout=self.settings.operation_timeout_seconds)

    def _create(
        self, what: str, name: str, start: Callable[[], Any], get: Callable[..., T], record: list[Any], body: Any
    ) -> tuple[T | None, bool]:
        """Creates; a concurrent creator that won the race is not an error: its resource is compared instead."""
        record.append({"call": f"Create{what}", "name": name, "body": _to_dict(body)})
        try:
            created = self._wait(f"create {what} {name}", start)
        except PermanentStoreError as error:
            if not isinstance(error.__cause__, gexc.Conflict):
                raise
            return self._get(what, get, name), False
        return created, True

    # update --------------------------------------------------------------------------------------------------

    def _autoscaling(self) -> dict[str, int]:
        low = int(settings.FCC_ONLINE_MIN_NODES)
        high = int(settings.FCC_ONLINE_MAX_NODES)
        cpu = int(settings.FCC_ONLINE_CPU_TARGET)
        if low < 1 or high < low or high > 10 * low:
            raise PermanentStoreError(
                f"Bigtable autoscaling min {low} / max {high} nodes breaks Vertex's rule "
                "(min >= 1, min <= max <= 10 x min)",
                action="fix FCC_ONLINE_MIN_NODES / FCC_ONLINE_MAX_NODES",
            )
        if not 10 <= cpu <= 80:
            raise PermanentStoreError(
                f"Bigtable CPU utilization target {cpu} % is outside Vertex's 10-80 %",
                action="fix FCC_ONLINE_CPU_TARGET",
            )
        return {"min_node_count": low, "max_node_count": high, "cpu_utilization_target": cpu}

    def _validate(self, view: OnlineViewSpec) -> tuple[dict[str, list[OnlineFeature]], dict[str, list[OnlineFeature]]]:
        """Everything Vertex would refuse, refused here before any call. The served features by component, and
        the registered ones (every feature of `view.registered`, and the served ones) by component."""
        resource_id_check("FeatureOnlineStore", self.online_store_id)
        resource_id_check("FeatureView", view.name)
        unknown = sorted(set(view.options) - {"id_template"})
        if unknown:
            raise PermanentStoreError(f"the vertex online store does not know the view options {unknown}")
        template = view.options.get("id_template", ENTITY_ID_TEMPLATE)
        if template != ENTITY_ID_TEMPLATE:
            raise PermanentStoreError(
                f"the vertex online store forms entity ids as {ENTITY_ID_TEMPLATE} (in the online source view), "
                f"not {template}"
            )
        by_component: dict[str, list[OnlineFeature]] = {}
        seen: set[str] = set()
        for feature in view.features:
            self._feature_check(feature)
            if feature.name in seen:
                raise PermanentStoreError(f"feature {feature.name} is twice in the online view {view.name}")
            seen.add(feature.name)
            by_component.setdefault(feature.component, []).append(feature)
        _label_check(f"feature view {view.name}", self._view_labels(view))
        registered: dict[str, OnlineFeature] = {}
        for feature in view.registered:
            self._feature_check(feature)
            if feature.name in registered:
                raise PermanentStoreError(f"feature {feature.name} is registered twice")
            registered[feature.name] = feature
        for feature in view.features:
            known = registered.setdefault(feature.name, feature)
            if known != feature:
                raise PermanentStoreError(
                    f"feature {feature.name} is served as {feature} but registered as {known}: one feature, one "
                    "definition"
                )
        registered_by_component: dict[str, list[OnlineFeature]] = {}
        for feature in registered.values():
            registered_by_component.setdefault(feature.component, []).append(feature)
        return (
            {c: sorted(fs, key=lambda f: f.name) for c, fs in sorted(by_component.items())},
            {c: sorted(fs, key=lambda f: f.name) for c, fs in sorted(registered_by_component.items())},
        )

    def _feature_check(self, feature: OnlineFeature) -> None:
        resource_id_check("Feature", feature.name)
        resource_id_check("FeatureGroup", self.feature_group_id(feature.component))
        if feature.dtype not in DTYPE_VALUE_FIELD:
            raise PermanentStoreError(f"feature {feature.name} has dtype {feature.dtype!r}, unknown to Vertex")
        if feature.ttl_seconds <= 0:
            raise PermanentStoreError(f"feature {feature.name} needs a positive TTL, not {feature.ttl_seconds}")
        _label_check(f"feature {feature.name}", self._feature_labels(feature))

    def _common_labels(self) -> dict[str, str]:
        return {LABEL_MANAGED: MANAGED_BY, LABEL_ENVIRONMENT: self.environment}

    def _feature_labels(self, feature: OnlineFeature) -> dict[str, str]:
        return {LABEL_DTYPE: feature.dtype, LABEL_TTL: str(feature.ttl_seconds), LABEL_COMPONENT: feature.component}

    def _view_labels(self, view: OnlineViewSpec) -> dict[str, str]:
        return {**self._common_labels(), LABEL_ENTITY_TYPE: view.entity_type}

    def update(self, view: OnlineViewSpec) -> StepOutcome:
        by_component, registered = self._validate(view)
        autoscaling = self._autoscaling()
        self._served = None
        record: list[Any] = []
        created: list[str] = []
        updated: list[str] = []
        self._ensure_online_store(autoscaling, record, created, updated)
        for component, features in registered.items():
            self._ensure_feature_group(component, record, created, updated)
            self._ensure_features(component, features, record, created, updated)
        self._ensure_feature_view(view, by_component, record, created, updated)
        if not record:
            total = sum(len(fs) for fs in registered.values())
            record.append(
                f"feature view {view.name}: {len(view.features)} features served, {total} registered in "
                f"{len(registered)} groups, unchanged"
            )
        return StepOutcome(
            request=record, changed=bool(created or updated), result={"created": created, "updated": updated}
        )

    def _ensure_online_store(
        self, autoscaling: dict[str, int], record: list[Any], created: list[str], updated: list[str]
    ) -> None:
        _, admin, _ = self._client_set()
        name = self._online_store_name()
        wanted_labels = self._common_labels()
        live = self._get("FeatureOnlineStore", admin.get_feature_online_store, name)
        if live is None:
            body = aiplatform_v1.FeatureOnlineStore(
                bigtable=aiplatform_v1.FeatureOnlineStore.Bigtable(
                    auto_scaling=aiplatform_v1.FeatureOnlineStore.Bigtable.AutoScaling(**autoscaling)
                ),
                labels=wanted_labels,
            )
            live, made = self._create(
                "FeatureOnlineStore",
                name,
                lambda: admin.create_feature_online_store(
                    parent=self.location,
                    feature_online_store=body,
                    feature_online_store_id=self.online_store_id,
                    timeout=self.settings.request_timeout_seconds,
                ),
                admin.get_feature_online_store,
                record,
                body,
            )
            if made:
                created.append(name)
                return
            if live is None:
                raise TransientStoreError(f"FeatureOnlineStore {name} was being created by someone else; retry")
        if "bigtable" not in live:
            raise PermanentStoreError(
                f"FeatureOnlineStore {name} exists without Bigtable online serving; the storage type cannot change "
                "in place: delete it by hand (its feature views go with it) and rerun",
                action="replace the online store",
            )
        mask: list[str] = []
        patch = aiplatform_v1.FeatureOnlineStore(name=name)
        scaling = live.bigtable.auto_scaling
        live_scaling = {
            "min_node_count": scaling.min_node_count,
            "max_node_count": scaling.max_node_count,
            "cpu_utilization_target": scaling.cpu_utilization_target,
        }
        if live_scaling != autoscaling:
            patch.bigtable = aiplatform_v1.FeatureOnlineStore.Bigtable(
                auto_scaling=aiplatform_v1.FeatureOnlineStore.Bigtable.AutoScaling(**autoscaling)
            )
            mask.append("bigtable.auto_scaling")
        labels = _merged_labels(live.labels, wanted_labels)
        if labels is not None:
            patch.labels = labels
            mask.append("labels")
        if mask:
            record.append({"call": "UpdateFeatureOnlineStore", "name": name, "mask": mask, "body": _to_dict(patch)})
            self._wait(
                f"update FeatureOnlineStore {name}",
                lambda: admin.update_feature_online_store(
                    feature_online_store=patch,
                    update_mask={"paths": mask},
                    timeout=self.settings.request_timeout_seconds,
                ),
            )
            updated.append(f"{name} ({', '.join(mask)})")

    def _ensure_feature_group(self, component: str, record: list[Any], created: list[str], updated: list[str]) -> None:
        registry, _, _ = self._client_set()
        group_id = self.feature_group_id(component)
        name = self._group_name(group_id)
        wanted_labels = {**self._common_labels(), LABEL_COMPONENT: component}
        source = self.source_uri(component)
        live = self._get("FeatureGroup", registry.get_feature_group, name)
        if live is None:
            body = aiplatform_v1.FeatureGroup(
                big_query=aiplatform_v1.FeatureGroup.BigQuery(
                    big_query_source=aiplatform_v1.BigQuerySource(input_uri=source),
                    entity_id_columns=[ENTITY_ID_COLUMN],
                    time_series=aiplatform_v1.FeatureGroup.BigQuery.TimeSeries(timestamp_column=TIMESTAMP_COLUMN),
                ),
                labels=wanted_labels,
                description=(
                    f"{component} features of {self.environment}, keyed by {ENTITY_ID_TEMPLATE}; "
                    "managed by the feature catalog console."
                ),
            )
            live, made = self._create(
                "FeatureGroup",
                name,
                lambda: registry.create_feature_group(
                    parent=self.location,
                    feature_group=body,
                    feature_group_id=group_id,
                    timeout=self.settings.request_timeout_seconds,
                ),
                registry.get_feature_group,
                record,
                body,
            )
            if made:
                created.append(name)
                return
            if live is None:
                raise TransientStoreError(f"FeatureGroup {name} was being created by someone else; retry")
        live_source = live.big_query.big_query_source.input_uri
        live_ts = live.big_query.time_series.timestamp_column or TIMESTAMP_COLUMN
        if live_source != source or live_ts != TIMESTAMP_COLUMN:
            raise PermanentStoreError(
                f"FeatureGroup {name} reads {live_source} (timestamp {live_ts}), not {source} ({TIMESTAMP_COLUMN}); "
                "a group's source is immutable: delete the group by hand and rerun",
                action="replace the feature group",
            )
        mask: list[str] = []
        patch = aiplatform_v1.FeatureGroup(name=name)
        if list(live.big_query.entity_id_columns) != [ENTITY_ID_COLUMN]:
            patch.big_query = aiplatform_v1.FeatureGroup.BigQuery(entity_id_columns=[ENTITY_ID_COLUMN])
            mask.append("big_query.entity_id_columns")
        labels = _merged_labels(live.labels, wanted_labels)
        if labels is not None:
            patch.labels = labels
            mask.append("labels")
        if mask:
            record.append({"call": "UpdateFeatureGroup", "name": name, "mask": mask, "body": _to_dict(patch)})
            self._wait(
                f"update FeatureGroup {name}",
                lambda: registry.update_feature_group(
                    feature_group=patch, update_mask={"paths": mask}, timeout=self.settings.request_timeout_seconds
                ),
            )
            updated.append(f"{name} ({', '.join(mask)})")

    def _list_features(self, group: str) -> dict[str, Any]:
        """The group's Features by ID (the client's pager follows every page)."""
        registry, _, _ = self._client_set()
        with self._calling(f"list Features of {group}"):
            return {
                _leaf(f.name): f
                for f in registry.list_features(parent=group, timeout=self.settings.request_timeout_seconds)
            }

    def _ensure_features(
        self, component: str, features: list[OnlineFeature], record: list[Any], created: list[str], updated: list[str]
    ) -> None:
        """Compares the registered Features with one listing, creates the missing ones in batches."""
        group = self._group_name(self.feature_group_id(component))
        live = self._list_features(group)
        missing: list[OnlineFeature] = []
        for feature in features:
            current = live.get(feature.name)
            if current is None:
                missing.append(feature)
            else:
                self._compare_feature(f"{group}/features/{feature.name}", current, feature, record, updated)
        for start in range(0, len(missing), FEATURE_BATCH):
            self._batch_create(group, missing[start : start + FEATURE_BATCH], record, created, updated)

    def _feature_body(self, feature: OnlineFeature) -> Any:
        return aiplatform_v1.Feature(version_column_name=feature.name, labels=self._feature_labels(feature))

    def _batch_create(
        self, group: str, features: list[OnlineFeature], record: list[Any], created: list[str], updated: list[str]
    ) -> None:
        registry, _, _ = self._client_set()
        ids = [f.name for f in features]
        record.append({"call": "BatchCreateFeatures", "name": group, "feature_ids": ids})
        requests_ = [
            aiplatform_v1.CreateFeatureRequest(parent=group, feature=self._feature_body(f), feature_id=f.name)
            for f in features
        ]
        try:
            self._wait(
                f"create {len(ids)} Features in {group}",
                lambda: registry.batch_create_features(
                    parent=group, requests=requests_, timeout=self.settings.request_timeout_seconds
                ),
            )
        except PermanentStoreError as error:
            if not isinstance(error.__cause__, gexc.Conflict):
                raise
            # Someone registered some of them meanwhile: compare those, create the rest one by one.
            live = self._list_features(group)
            for feature in features:
                name = f"{group}/features/{feature.name}"
                current = live.get(feature.name)
                if current is not None:
                    self._compare_feature(name, current, feature, record, updated)
                else:
                    self._create_feature(group, feature, record, created, updated)
            return
        created.extend(f"{group}/features/{i}" for i in ids)

    def _create_feature(
        self, group: str, feature: OnlineFeature, record: list[Any], created: list[str], updated: list[str]
    ) -> None:
        registry, _, _ = self._client_set()
        name = f"{group}/features/{feature.name}"
        body = self._feature_body(feature)
        live, made = self._create(
            "Feature",
            name,
            lambda: registry.create_feature(
                parent=group, feature=body, feature_id=feature.name, timeout=self.settings.request_timeout_seconds
            ),
            registry.get_feature,
            record,
            body,
        )
        if made:
            created.append(name)
            return
        if live is None:
            raise TransientStoreError(f"Feature {name} was being created by someone else; retry")
        self._compare_feature(name, live, feature, record, updated)

    def _compare_feature(
        self, name: str, live: Any, feature: OnlineFeature, record: list[Any], updated: list[str]
    ) -> None:
        registry, _, _ = self._client_set()
        column = live.version_column_name or _leaf(live.name)
        if column != feature.name:
            raise PermanentStoreError(
                f"Feature {name} reads column {column}, not {feature.name}; a feature's column is immutable: "
                "delete the feature by hand and rerun",
                action="replace the feature",
            )
        labels = _merged_labels(live.labels, self._feature_labels(feature))
        if labels is not None:
            patch = aiplatform_v1.Feature(name=name, labels=labels)
            record.append({"call": "UpdateFeature", "name": name, "mask": ["labels"], "body": _to_dict(patch)})
            self._wait(
                f"update Feature {name}",
                lambda: registry.update_feature(
                    feature=patch, update_mask={"paths": ["labels"]}, timeout=self.settings.request_timeout_seconds
                ),
            )
            updated.append(f"{name} (labels)")

    def _ensure_feature_view(
        self,
        view: OnlineViewSpec,
        by_component: dict[str, list[OnlineFeature]],
        record: list[Any],
        created: list[str],
        updated: list[str],
    ) -> None:
        _, admin, _ = self._client_set()
        name = self._view_name(view.name)
        wanted_groups = {self.feature_group_id(c): sorted(f.name for f in fs) for c, fs in by_component.items()}
        wanted_labels = self._view_labels(view)
        registry_source = aiplatform_v1.FeatureView.FeatureRegistrySource(
            feature_groups=[
                aiplatform_v1.FeatureView.FeatureRegistrySource.FeatureGroup(feature_group_id=g, feature_ids=ids)
                for g, ids in sorted(wanted_groups.items())
            ]
        )
        live = self._get("FeatureView", admin.get_feature_view, name)
        if live is None:
            if not wanted_groups:
                record.append(f"feature view {view.name}: no online features, nothing to serve")
                return
            body = aiplatform_v1.FeatureView(
                feature_registry_source=registry_source,
                sync_config=aiplatform_v1.FeatureView.SyncConfig(cron=self.settings.sync_cron),
                labels=wanted_labels,
            )
            live, made = self._create(
                "FeatureView",
                name,
                lambda: admin.create_feature_view(
                    parent=self._online_store_name(),
                    feature_view=body,
                    feature_view_id=view.name,
                    timeout=self.settings.request_timeout_seconds,
                ),
                admin.get_feature_view,
                record,
                body,
            )
            if made:
                created.append(name)
                return
            if live is None:
                raise TransientStoreError(f"FeatureView {name} was being created by someone else; retry")
        if "feature_registry_source" not in live:
            raise PermanentStoreError(
                f"FeatureView {name} is not fed by the Feature Registry; its source kind cannot change in place: "
                "delete it by hand and rerun",
                action="replace the feature view",
            )
        if not wanted_groups:
            raise PermanentStoreError(
                f"FeatureView {name} cannot serve no features; delete it by hand if the environment has no online "
                "features any more",
                action="delete the feature view",
            )
        live_groups = {g.feature_group_id: sorted(g.feature_ids) for g in live.feature_registry_source.feature_groups}
        mask: list[str] = []
        patch = aiplatform_v1.FeatureView(name=name)
        if live_groups != wanted_groups:
            patch.feature_registry_source = registry_source
            mask.append("feature_registry_source.feature_groups")
        if live.sync_config.cron != self.settings.sync_cron:
            patch.sync_config = aiplatform_v1.FeatureView.SyncConfig(cron=self.settings.sync_cron)
            mask.append("sync_config.cron")
        labels = _merged_labels(live.labels, wanted_labels)
        if labels is not None:
            patch.labels = labels
            mask.append("labels")
        if mask:
            record.append({"call": "UpdateFeatureView", "name": name, "mask": mask, "body": _to_dict(patch)})
            self._wait(
                f"update FeatureView {name}",
                lambda: admin.update_feature_view(
                    feature_view=patch, update_mask={"paths": mask}, timeout=self.settings.request_timeout_seconds
                ),
            )
            updated.append(f"{name} ({', '.join(mask)})")

    # describe ------------------------------------------------------------------------------------------------

    def describe(self) -> OnlineViewSpec | None:
        registry, admin, _ = self._client_set()
        resource_id_check("FeatureOnlineStore", self.online_store_id)
        store = self._online_store_name()
        if self._get("FeatureOnlineStore", admin.get_feature_online_store, store) is None:
            return None
        with self._calling(f"list FeatureViews of {store}"):
            views = sorted(
                admin.list_feature_views(parent=store, timeout=self.settings.request_timeout_seconds),
                key=lambda v: _leaf(v.name),
            )
        if not views:
            return None
        live = views[0]
        features: list[OnlineFeature] = []
        id_columns: set[tuple[str, ...]] = set()
        for group_ref in live.feature_registry_source.feature_groups:
            group_name = self._group_name(group_ref.feature_group_id)
            group = self._get("FeatureGroup", registry.get_feature_group, group_name)
            if group is None:
                continue
            id_columns.add(tuple(group.big_query.entity_id_columns))
            component = group.labels.get(LABEL_COMPONENT) or group_ref.feature_group_id.rsplit("_", 1)[-1]
            registered = self._list_features(group_name)
            for feature_id in group_ref.feature_ids:
                feature = registered.get(feature_id)
                if feature is None:
                    continue  # served by the view but gone from the registry: drift shows it missing
                features.append(_described(feature_id, feature, component))
        options: dict[str, Any] = (
            {"id_template": ENTITY_ID_TEMPLATE}
            if id_columns <= {(ENTITY_ID_COLUMN,)}
            else {"entity_id_columns": sorted(list(c) for c in id_columns)}
        )
        return OnlineViewSpec(
            name=_leaf(live.name),
            entity_type=live.labels.get(LABEL_ENTITY_TYPE, ""),
            features=tuple(sorted(features, key=lambda f: f.name)),
            options=options,
        )

    def registered_features(self, components: Sequence[str]) -> dict[str, dict[str, OnlineFeature]] | None:
        """The Features registered in the components' groups, as their labels describe them."""
        registry, _, _ = self._client_set()
        out: dict[str, dict[str, OnlineFeature]] = {}
        for component in sorted(set(components)):
            group_name = self._group_name(resource_id_check("FeatureGroup", self.feature_group_id(component)))
            if self._get("FeatureGroup", registry.get_feature_group, group_name) is None:
                continue
            live = self._list_features(group_name)
            if live:
                out[component] = {i: _described(i, f, component) for i, f in sorted(live.items())}
        return out

    def _served_view(self) -> OnlineViewSpec:
        if self._served is None:
            served = self.describe()
            if served is None:
                raise PermanentStoreError(
                    f"no Vertex AI feature view serves {self.environment} yet; apply update_online_store first"
                )
            self._served = served
        return self._served

    # read ----------------------------------------------------------------------------------------------------

    def read(
        self, entity_ids: Sequence[str], features: Sequence[str], now: datetime | None = None
    ) -> dict[str, dict[str, OnlineValue]]:
        view = self._served_view()
        _, _, serving = self._client_set()
        ttls = {f.name: f.ttl_seconds for f in view.features}
        moment = now or datetime.now(UTC)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        view_name = self._view_name(view.name)
        out: dict[str, dict[str, OnlineValue]] = {}
        for entity_id in entity_ids:
            found = self._fetch(serving, view_name, entity_id)
            values: dict[str, OnlineValue] = {}
            for name in features:
                item = found.get(name)
                if item is None:
                    values[name] = OnlineValue(None, None, "missing")
                    continue
                value, event = item
                if event is not None and name in ttls and (moment - event).total_seconds() > ttls[name]:
                    values[name] = OnlineValue(None, event, "expired")
                else:
                    values[name] = OnlineValue(value, event, "present")
            out[entity_id] = values
        return out

    def _fetch(self, serving: Any, view_name: str, entity_id: str) -> dict[str, tuple[Any, datetime | None]]:
        """The values Vertex holds for one entity: {feature: (value, generate time)}; absent ones left out."""
        with self._calling(f"fetch feature values of {entity_id} from {view_name}"):
            try:
                response = serving.fetch_feature_values(
                    request=aiplatform_v1.FetchFeatureValuesRequest(
                        feature_view=view_name,
                        data_key=aiplatform_v1.FeatureViewDataKey(key=entity_id),
                        data_format=aiplatform_v1.FeatureViewDataFormat.KEY_VALUE,
                    ),
                    timeout=self.settings.request_timeout_seconds,
                )
            except gexc.NotFound:
                # Bigtable online serving answers NOT_FOUND for an entity id it does not hold.
                return {}
        found: dict[str, tuple[Any, datetime | None]] = {}
        for pair in response.key_values.features:
            if "value" not in pair:
                continue
            decoded = _decode(pair.value)
            if decoded is not None:
                found[pair.name] = decoded
        return found

    # write ---------------------------------------------------------------------------------------------------

    def write(self, rows: Sequence[tuple[str, datetime, dict[str, Any]]]) -> int:
        """Direct writes to the feature view (FeatureViewDirectWrite, Bigtable online serving only).

        The regular path is the cron sync from the BigQuery source; this is for values that cannot wait for it.
        Vertex does not write them back to BigQuery, and the next sync serves whichever value is newest. Older
        values never win: each entity's current values are fetched first and only newer ones are sent (two
        writers racing on the same entity can still interleave).
        """
        if self.settings.transport != "grpc":
            raise PermanentStoreError(
                "FeatureViewDirectWrite is a bidirectional gRPC stream that google-cloud-aiplatform does not offer "
                "over REST: use transport 'grpc' to write, or let the feature view's cron sync load the values "
                "from the offline tables",
                action="set online_options transport to grpc",
            )
        if not rows:
            return 0
        view = self._served_view()
        dtypes = {f.name: f.dtype for f in view.features}
        latest: dict[str, dict[str, tuple[Any, datetime]]] = {}
        for entity_id, event_time, values in rows:
            if event_time.tzinfo is None:
                raise PermanentStoreError(f"event time of {entity_id} has no time zone")
            for name, value in values.items():
                if name not in dtypes:
                    raise PermanentStoreError(f"feature {name} is not served by the feature view {view.name}")
                if value is None:
                    continue  # Vertex holds no nulls: an absent value reads as missing
                current = latest.setdefault(entity_id, {}).get(name)
                if current is None or current[1] <= event_time:
                    latest[entity_id][name] = (value, event_time)
        _, _, serving = self._client_set()
        view_name = self._view_name(view.name)
        items = []
        for entity_id, values in latest.items():
            stored = self._fetch(serving, view_name, entity_id)
            newer = {name: item for name, item in values.items() if _not_older(item[1], stored.get(name))}
            if newer:
                items.append(
                    aiplatform_v1.FeatureViewDirectWriteRequest.DataKeyAndFeatureValues(
                        data_key=aiplatform_v1.FeatureViewDataKey(key=entity_id),
                        features=[
                            aiplatform_v1.FeatureViewDirectWriteRequest.DataKeyAndFeatureValues.Feature(
                                name=name, value=_encode(dtypes[name], value, event_time)
                            )
                            for name, (value, event_time) in sorted(newer.items())
                        ],
                    )
                )
        if items:
            self._direct_write(serving, view_name, items)
        return len(rows)

    def _direct_write(self, serving: Any, view_name: str, items: list[Any]) -> None:
        requests_ = [
            aiplatform_v1.FeatureViewDirectWriteRequest(
                feature_view=view_name, data_key_and_feature_values=items[i : i + DIRECT_WRITE_BATCH]
            )
            for i in range(0, len(items), DIRECT_WRITE_BATCH)
        ]
        failures: list[tuple[int, str]] = []
        with self._calling(f"direct write of {len(items)} entities to {view_name}"):
            for response in serving.feature_view_direct_write(
                requests=iter(requests_), timeout=self.settings.request_timeout_seconds
            ):
                if response.status.code:
                    failures.append((response.status.code, response.status.message))
        if failures:
            # google.rpc.Code: UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, DEADLINE_EXCEEDED and INTERNAL may pass.
            message = "; ".join(sorted({m for _, m in failures}))
            if all(code in (4, 8, 10, 13, 14) for code, _ in failures):
                raise TransientStoreError(f"Vertex AI direct write to {view_name} failed for some entities: {message}")
            if any(code == 7 for code, _ in failures):
                raise PermanentStoreError(
                    f"Vertex AI direct write to {view_name} was refused ({message}); the identity needs {IAM_ROLE}",
                    action=f"grant {IAM_ROLE}",
                )
            raise PermanentStoreError(f"Vertex AI direct write to {view_name} failed: {message}")


def _described(feature_id: str, feature: Any, component: str) -> OnlineFeature:
    """A registered Feature as the catalog knows it, from the labels update() gave it."""
    labels = feature.labels
    ttl = labels.get(LABEL_TTL, "")
    return OnlineFeature(
        name=feature_id,
        dtype=labels.get(LABEL_DTYPE, ""),
        ttl_seconds=int(ttl) if ttl.isdigit() else 0,
        component=labels.get(LABEL_COMPONENT, component),
    )


def _not_older(event_time: datetime, stored: tuple[Any, datetime | None] | None) -> bool:
    return stored is None or stored[1] is None or stored[1] <= event_time


def _encode(dtype: str, value: Any, event_time: datetime) -> Any:
    field = DTYPE_VALUE_FIELD[dtype]
    if field == "double_value":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            raise PermanentStoreError(f"{value!r} is not a {dtype} value")
        converted: Any = float(value)
    elif field == "int64_value":
        if isinstance(value, bool) or not isinstance(value, int):
            raise PermanentStoreError(f"{value!r} is not an int64 value")
        converted = value
    elif field == "bool_value":
        if not isinstance(value, bool):
            raise PermanentStoreError(f"{value!r} is not a bool value")
        converted = value
    else:
        if not isinstance(value, str):
            raise PermanentStoreError(f"{value!r} is not a string value")
        converted = value
    return aiplatform_v1.FeatureValue(
        **{field: converted}, metadata=aiplatform_v1.FeatureValue.Metadata(generate_time=event_time)
    )


def _decode(value: Any) -> tuple[Any, datetime | None] | None:
    """(value, generate time) of a FeatureValue, None when it holds no value (never a zero for a missing one)."""
    kind = aiplatform_v1.FeatureValue.pb(value).WhichOneof("value")
    if kind is None:
        return None
    raw = getattr(value, kind)
    decoded: Any
    if kind.endswith("_array_value"):
        decoded = list(raw.values)
    elif kind == "struct_value":
        decoded = type(raw).to_dict(raw)
    else:
        decoded = raw
    event: datetime | None = None
    if "metadata" in value and "generate_time" in value.metadata:
        stamp = value.metadata.generate_time
        event = datetime.fromtimestamp(stamp.timestamp(), UTC)
    return decoded, event
