"""Drift: the live offline and online stores compared with the environment's applied catalog."""

import logging
from typing import Any

from catalog.models import Environment
from provisioning import desired
from provisioning.backends import offline_store_for, online_store_for
from provisioning.ddl import CLUSTER_COLUMNS, PARTITION_COLUMN, VIEW_NAME
from provisioning.errors import StoreError
from provisioning.models import DriftReport
from provisioning.online.base import OnlineFeature, OnlineStore

logger = logging.getLogger(__name__)


def _finding(kind: str, target: str, expected: Any = None, actual: Any = None) -> dict[str, Any]:
    return {"kind": kind, "target": target, "expected": expected, "actual": actual}


def drift_findings(environment: Environment) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    offline = offline_store_for(environment)
    expected = {t.name: t for t in desired.all_tables(environment).values()}
    live = offline.describe()
    dataset = environment.bigquery_dataset
    for name, table in sorted(expected.items()):
        actual = live.get(name)
        target = f"{dataset}.{name}"
        if actual is None:
            findings.append(_finding("missing_table", target))
            continue
        for column in table.columns:
            live_column = actual.column(column.name)
            if live_column is None:
                findings.append(_finding("missing_column", f"{target}.{column.name}", column.type))
            elif live_column.type != column.type:
                findings.append(_finding("type_mismatch", f"{target}.{column.name}", column.type, live_column.type))
        known = {c.name for c in table.columns}
        findings.extend(
            _finding("extra_column", f"{target}.{c.name}", None, c.type) for c in actual.columns if c.name not in known
        )
        if actual.partition_column != PARTITION_COLUMN:
            findings.append(_finding("partitioning", target, f"DATE({PARTITION_COLUMN})", actual.partition_column))
        if tuple(actual.cluster_by) != CLUSTER_COLUMNS:
            findings.append(_finding("clustering", target, list(CLUSTER_COLUMNS), list(actual.cluster_by)))
        if not actual.require_partition_filter:
            findings.append(_finding("require_partition_filter", target, True, False))
    findings.extend(_finding("extra_table", f"{dataset}.{name}") for name in sorted(set(live) - set(expected)))
    if expected and VIEW_NAME not in offline.views():
        findings.append(_finding("missing_view", f"{dataset}.{VIEW_NAME}"))

    view = desired.online_view(environment)
    online_store = online_store_for(environment)
    live_view = online_store.describe()
    if view.features and live_view is None:
        findings.append(_finding("missing_online_view", view.name, [f.name for f in view.features]))
    elif live_view is not None:
        want = {f.name: f for f in view.features}
        have = {f.name: f for f in live_view.features}
        findings.extend(_finding("missing_online_feature", f"{view.name}.{n}") for n in sorted(set(want) - set(have)))
        findings.extend(_finding("extra_online_feature", f"{view.name}.{n}") for n in sorted(set(have) - set(want)))
        for name in sorted(set(want) & set(have)):
            if want[name].ttl_seconds != have[name].ttl_seconds:
                findings.append(
                    _finding(
                        "online_ttl_mismatch", f"{view.name}.{name}", want[name].ttl_seconds, have[name].ttl_seconds
                    )
                )
    findings.extend(_registered_findings(view.registered, online_store))
    return findings


def _registered_findings(wanted: tuple[OnlineFeature, ...], store: OnlineStore) -> list[dict[str, Any]]:
    """Features the catalog has and the store's registry (Vertex AI: the component's FeatureGroup) lacks."""
    live = store.registered_features(sorted({f.component for f in wanted}))
    if live is None:
        return []  # the store keeps no registry
    findings = []
    for feature in sorted(wanted, key=lambda f: (f.component, f.name)):
        have = live.get(feature.component, {}).get(feature.name)
        target = f"{feature.component}.{feature.name}"
        if have is None:
            findings.append(_finding("missing_registered_feature", target, feature.dtype))
        elif (have.dtype, have.ttl_seconds) != (feature.dtype, feature.ttl_seconds):
            findings.append(
                _finding(
                    "registered_feature_mismatch",
                    target,
                    {"dtype": feature.dtype, "ttl_seconds": feature.ttl_seconds},
                    {"dtype": have.dtype, "ttl_seconds": have.ttl_seconds},
                )
            )
    return findings


def drift_detect(*, environment: Environment, trigger: str) -> DriftReport:
    """Compares and records a report. A store that cannot be read is recorded as such, not as consistent."""
    try:
        findings = drift_findings(environment)
        error = ""
    except StoreError as failure:
        findings, error = [], str(failure)
    report = DriftReport.objects.create(
        environment=environment,
        revision=environment.revision,
        findings=findings,
        consistent=not findings and not error,
        error=error,
        trigger=trigger,
    )
    logger.info(
        "drift detected" if findings else "no drift", extra={"environment": environment.name, "findings": len(findings)}
    )
    return report
