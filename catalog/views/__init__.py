"""The console's server-rendered pages, one module per page group; URL patterns in config/urls.py."""

from catalog.views.catalog import (
    component_detail,
    component_list,
    feature_detail,
    feature_list,
    team_detail,
    team_list,
)
from catalog.views.change_requests import (
    change_request_approve,
    change_request_detail,
    change_request_list,
    change_request_promote,
    change_request_reject,
    change_request_replan,
)
from catalog.views.home import healthz, home
from catalog.views.lineage import lineage
from catalog.views.provisioning import (
    backfill_cancel,
    backfill_detail,
    backfill_list,
    backfill_progress,
    backfill_start,
    costs,
    drift,
    drift_run,
    run_detail,
    run_list,
    run_progress,
    run_retry,
)
from catalog.views.training import (
    training_dataset_detail,
    training_dataset_list,
    training_dataset_progress,
    training_dataset_request,
    training_dataset_result,
)

__all__ = [
    "backfill_cancel",
    "backfill_detail",
    "backfill_list",
    "backfill_progress",
    "backfill_start",
    "change_request_approve",
    "change_request_detail",
    "change_request_list",
    "change_request_promote",
    "change_request_reject",
    "change_request_replan",
    "component_detail",
    "component_list",
    "costs",
    "drift",
    "drift_run",
    "feature_detail",
    "feature_list",
    "healthz",
    "home",
    "lineage",
    "run_detail",
    "run_list",
    "run_progress",
    "run_retry",
    "team_detail",
    "team_list",
    "training_dataset_detail",
    "training_dataset_list",
    "training_dataset_progress",
    "training_dataset_request",
    "training_dataset_result",
]
