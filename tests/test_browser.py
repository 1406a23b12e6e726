"""End to end in headless Chromium (Debian's /usr/bin/chromium) driven by Playwright, against the live server.

A reviewer signs in, reads a change request's diff, approves it and watches its provisioning run finish (the
run executes in-process in a thread, as a worker would); the author is not offered approval; the lineage graph
draws its nodes; the cost charts draw. Screenshots of the key pages go to artifacts/screenshots/.

Skipped (with the reason) only when Chromium or Playwright is missing and FCC_REQUIRE_BROWSER is not set; with it
set, a missing browser fails the run.
"""

import importlib.util
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.db import connection, connections

from catalog.models import ChangeRequest, Feature
from catalog.services import change_request_submit
from provisioning import runner
from provisioning.models import ProvisioningRun

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "artifacts" / "screenshots"
# As the machine notes require: no background networking (this machine's network is closed), no GPU, no sandbox
# (root in CI).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000


def _missing() -> str:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian packages chromium and chromium-driver)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (the dev extras)"
    return ""


_MISSING = _missing()
if _MISSING and os.environ.get("FCC_REQUIRE_BROWSER"):
    raise RuntimeError(f"FCC_REQUIRE_BROWSER is set but {_MISSING}")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(bool(_MISSING), reason=f"browser tests skipped: {_MISSING}"),
]


@pytest.fixture(autouse=True)
def stores(tmp_path, settings, monkeypatch):
    settings.FCC_STORES = {
        env: {
            "offline_options": {"path": str(tmp_path / "offline")},
            "online_options": {"path": str(tmp_path / "online")},
        }
        for env in ("dev", "staging", "prod")
    }
    settings.FCC_STEP_BACKOFF_SECONDS = 0.001
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes between browser
    # steps are still plain synchronous calls.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def server(django_db_setup: None, live_server: Any) -> Any:
    """The live server, started after the test database exists so that it stops (closing its connections)
    before the database is dropped at the end of the session."""
    return live_server


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    # Django keeps connections per context (asgiref Local); Playwright's sync API switches this thread's
    # context, so a connection opened on either side of the switch must be closed on that side, or it
    # outlives the test and keeps PostgreSQL from dropping the test database.
    connections.close_all()
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()
            connections.close_all()


@pytest.fixture
def dev_provisioned(loaded: None) -> ProvisioningRun:
    """The bootstrap run of dev executed, so the next run applies at once (runs apply in revision order)."""
    run = ProvisioningRun.objects.get(environment__name="dev", revision=1)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    return run


def _page(browser: Any, server: Any, username: str) -> Any:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(f"{server.url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(f"pw-{username}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/")
    return page


def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _submit(users: dict[str, Any], specs: list[dict[str, Any]], author: str) -> ChangeRequest:
    c1 = next(s for s in specs if s["component"] == "c1")
    c1["features"][1]["description"] = "Call leg mid at the minute close, in index points (reworded)."
    c1["features"].append(
        {**c1["features"][2], "name": "atm_straddle_skew_browser", "source": "component_01.atmStraddleSkewBrowser"}
    )
    result = change_request_submit(
        user=users[author], environment_name="dev", title="Reword a c1 feature, add one", payload={"specs": [c1]}
    )
    assert result.change_request is not None
    return result.change_request


def _execute_in_background(run_id: int) -> threading.Thread:
    outcome: list[str] = []

    def work() -> None:
        try:
            outcome.append(runner.run_execute(run_id=run_id, worker="test"))
        finally:
            connection.close()

    thread = threading.Thread(target=work, name=f"run-{run_id}", daemon=True)
    thread.outcome = outcome  # type: ignore[attr-defined]
    thread.start()
    return thread


def test_reviewer_reads_the_diff_approves_and_watches_the_run_finish(browser, server, users, dev_provisioned, specs):
    from playwright.sync_api import expect

    cr = _submit(users, specs, author="dave")
    page = _page(browser, server, "bob")  # on team-straddle, which owns c1
    _shot(page, "home")
    page.get_by_role("link", name="Change requests").first.click()
    page.get_by_role("link", name=f"CR-{cr.pk}").first.click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(f"CR-{cr.pk}")
    component = page.locator("#component-c1")
    expect(component).to_contain_text("atm_call_premium")
    expect(component).to_contain_text("(reworded)")  # the new description, in the diff
    expect(component).to_contain_text("atm_straddle_skew_browser")  # the created feature
    expect(page.locator("#cost-h")).to_be_visible()
    _shot(page, "change-request-diff")

    page.get_by_label("Comment (optional)").fill("Reviewed in the browser test.")
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".messages")).to_contain_text("approved and applied to dev as revision 2")
    cr.refresh_from_db()
    assert cr.state == "approved"
    run = ProvisioningRun.objects.get(change_request=cr)
    progress = page.locator("#run-progress")
    expect(progress).to_contain_text("queued")
    worker = _execute_in_background(run.pk)
    expect(progress).to_contain_text("succeeded", timeout=60_000)  # polled by htmx, no reload
    expect(progress).to_contain_text("applied")
    worker.join(timeout=30)
    assert worker.outcome == ["succeeded"]  # type: ignore[attr-defined]
    cr.refresh_from_db()
    assert cr.state == "applied"
    rows = progress.locator("tbody tr")
    assert rows.count() == len(run.plan["steps"]) + 1  # the preflight, then the plan's steps
    _shot(page, "change-request-applied")
    page.get_by_role("link", name=f"Run #{run.pk} in full").click()
    expect(page.locator("#run-progress")).to_contain_text("succeeded")
    _shot(page, "run-detail")
    assert page.errors == []


def test_the_author_is_not_offered_approval(browser, server, users, dev_provisioned, specs):
    from playwright.sync_api import expect

    cr = _submit(users, specs, author="alice")  # alice owns team-straddle, but wrote this one
    page = _page(browser, server, "alice")
    page.goto(f"{server.url}/change-requests/{cr.pk}/")
    review = page.locator("#review")
    expect(review).to_contain_text("the author of a change request never reviews it")
    expect(review.get_by_role("button", name="Approve")).to_have_count(0)
    expect(review.get_by_role("button", name="Reject")).to_have_count(0)
    _shot(page, "change-request-author")
    assert page.errors == []


def test_lineage_graph_draws_its_nodes(browser, server, users, loaded):
    from playwright.sync_api import expect

    page = _page(browser, server, "erin")
    page.goto(f"{server.url}/lineage/?env=dev&component=c1")
    page.wait_for_function("() => window.fccLineage && window.fccLineage.nodes().length > 0")
    features = Feature.objects.filter(environment__name="dev", component__key="c1", status="active").count()
    drawn = page.evaluate("() => window.fccLineage.nodes().length")
    # Per feature: its source column, the feature, its BigQuery column; plus component, table, view, online view.
    assert drawn == features * 3 + 4
    assert page.evaluate("() => window.fccLineage.edges().length") > drawn
    box = page.locator("#lineage-graph canvas").first.bounding_box()
    assert box is not None
    assert box["width"] > 0
    assert box["height"] > 0
    page.get_by_label("Highlight a node").select_option("feature:atm_straddle_premium")
    expect(page.locator("#lineage-info")).to_contain_text("2 upstream")
    upstream = page.evaluate("() => window.fccLineage.nodes('.upstream').length")
    downstream = page.evaluate("() => window.fccLineage.nodes('.downstream').length")
    assert (upstream, downstream) == (2, 4)  # source, component; column, table, training_dataset, online view
    _shot(page, "lineage-component")

    page.goto(f"{server.url}/lineage/?env=dev&feature=atm_straddle_premium")
    page.wait_for_function("() => window.fccLineage && window.fccLineage.nodes().length > 0")
    assert page.evaluate("() => window.fccLineage.nodes().length") == 7
    expect(page.get_by_role("heading", name="Impact: what reads atm_straddle_premium")).to_be_visible()
    _shot(page, "lineage-impact")
    page.goto(f"{server.url}/lineage/?env=dev")
    page.wait_for_function("() => window.fccLineage && window.fccLineage.nodes().length > 0")
    assert page.evaluate("() => window.fccLineage.nodes().length") == 8 * 3 + 2
    _shot(page, "lineage-overview")
    page.goto(f"{server.url}/features/dev/atm_straddle_premium/")
    page.wait_for_function("() => window.fccLineage && window.fccLineage.nodes().length === 7")
    _shot(page, "feature")
    assert page.errors == []


def test_cost_charts_draw(browser, server, users, dev_provisioned):
    page = _page(browser, server, "erin")
    page.goto(f"{server.url}/costs/?env=dev")
    page.wait_for_function("() => window.fccCharts && Object.keys(window.fccCharts).length === 5")
    for chart in ("chart-tables", "chart-components", "chart-environments", "chart-online", "chart-changes"):
        box = page.locator(f"#{chart}").bounding_box()
        assert box is not None, chart
        assert box["width"] > 0, chart
        assert box["height"] > 0, chart
        assert page.evaluate(f"() => Chart.getChart(document.getElementById('{chart}')) !== undefined"), chart
    labels = page.evaluate("() => Chart.getChart(document.getElementById('chart-tables')).data.labels")
    assert labels == [f"c{i}_features" for i in range(1, 9)]
    online = page.evaluate("() => Chart.getChart(document.getElementById('chart-online')).data.datasets[0].data")
    assert online == [[949, 4745]]
    _shot(page, "costs")
    page.goto(f"{server.url}/drift/")
    page.get_by_role("button", name="Run drift detection on dev now").click()
    page.wait_for_selector("text=none. The stores match the catalog")
    _shot(page, "drift")
    page.goto(f"{server.url}/features/?env=dev&online=true")
    page.wait_for_selector("text=32 in all")
    _shot(page, "catalog")
    assert page.errors == []
