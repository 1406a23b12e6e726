"""The console's pages and their permissions. Personas (tests/conftest.py): alice owns team-straddle (c1), bob
is on it, gina owns team-greeks (c2), carol reviews, dave is the CI registrar, erin only views, root is admin."""

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse

from catalog import rules
from catalog.models import ChangeRequest, Environment, Feature
from catalog.services import catalog_load, change_request_approve, change_request_submit
from provisioning import runner
from provisioning.models import Backfill, DriftReport, ProvisioningRun

pytestmark = pytest.mark.django_db

PAGES = [
    "/",
    "/features/",
    "/components/",
    "/components/c1/",
    "/teams/",
    "/teams/team-straddle/",
    "/change-requests/",
    "/runs/",
    "/backfills/",
    "/lineage/",
    "/costs/",
    "/drift/",
]


@pytest.fixture(autouse=True)
def stores(tmp_path, settings, monkeypatch):
    """Stores under a temporary directory; backfill tasks recorded instead of sent to a broker."""
    settings.FCC_STORES = {
        env: {
            "offline_options": {"path": str(tmp_path / "offline")},
            "online_options": {"path": str(tmp_path / "online")},
        }
        for env in ("dev", "staging", "prod")
    }
    settings.FCC_STEP_BACKOFF_SECONDS = 0.001
    from workers import tasks

    monkeypatch.setattr(tasks.backfill_execute_task, "delay", lambda *a, **k: None)


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def submit(users, specs, *, author="dave", component="c1", mutate=None, title="Reword a c1 feature") -> ChangeRequest:
    spec = next(s for s in specs if s["component"] == component)
    if mutate is None:
        spec["features"][1]["description"] = "Reworded for the console test."
    else:
        mutate(spec)
    result = change_request_submit(user=users[author], environment_name="dev", title=title, payload={"specs": [spec]})
    assert result.change_request is not None
    return result.change_request


def messages_of(response) -> list[str]:
    return [str(m) for m in response.context["messages"]] if response.context else []


@pytest.fixture
def catalog(reference, tmp_path):
    """The real specs of c1 and c2 only (248 features), applied to dev: most pages need no more, and it loads
    in a quarter of the time of the whole catalog (`loaded`, used where counts of all 932 matter)."""
    specs_dir = tmp_path / "specs"
    specs_dir.mkdir()
    for key in ("c1", "c2"):
        shutil.copy(Path(settings.FCC_SPECS_DIR) / f"{key}.yaml", specs_dir / f"{key}.yaml")
    catalog_load(specs_dir=specs_dir, environment_names=["dev"])


@pytest.fixture
def proposed(users, catalog, specs) -> ChangeRequest:
    return submit(users, specs)


@pytest.fixture
def provisioned(catalog):
    run = ProvisioningRun.objects.get(environment__name="dev", revision=1)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    return run


# Sign-in and who may see what


@pytest.mark.parametrize("url", [*PAGES, "/features/dev/atm_straddle_premium/", "/change-requests/1/", "/runs/1/"])
def test_anonymous_is_sent_to_sign_in(client, url, users):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


@pytest.mark.parametrize(
    "url",
    ["/change-requests/1/approve/", "/change-requests/1/reject/", "/drift/dev/run/", "/backfills/start/"],
)
def test_anonymous_cannot_post(client, url, users):
    response = client.post(url, {"comment": "x"})
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_sign_in_page_and_form(client, users):
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert b'<label for="id_username">Username</label>' in page.content
    response = client.post(reverse("login"), {"username": "erin", "password": "pw-erin"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    signed_out = client.post(reverse("logout"), {"next": reverse("login")})
    assert signed_out["Location"] == reverse("login")
    assert client.get("/").status_code == 302


def test_every_page_renders_for_a_viewer(users, loaded):
    client = signed_in(users["erin"])
    for url in PAGES:
        response = client.get(url)
        assert response.status_code == 200, url
        assert b"<h1" in response.content, url


def test_existing_routes_still_work(client, users):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/api/v1/features/").status_code in (401, 403)
    assert client.get("/admin/").status_code == 302


def test_unknown_environment_is_404(users, catalog):
    assert signed_in(users["erin"]).get("/features/?env=qa").status_code == 404
    assert signed_in(users["erin"]).get("/features/dev/no_such_feature/").status_code == 404


# Home


def test_home_shows_the_environment_honestly(users, proposed, provisioned):
    body = signed_in(users["erin"]).get("/?env=dev").content.decode()
    assert "Environment dev" in body
    assert f"CR-{proposed.pk}" in body  # pending
    assert "No drift check yet" in body
    assert "the online sync has not written values" in body  # no sync has run: no freshness to show
    assert f"run #{provisioned.pk}" in body  # the online resources were updated by the bootstrap run
    assert "No backfills yet." in body


def test_home_shows_the_online_values_freshness_from_the_sync(users, proposed, provisioned):
    import datetime as dt

    from django.utils import timezone

    from catalog.models import Environment
    from provisioning.models import OnlineSyncState

    newest = timezone.now() - dt.timedelta(minutes=7)
    OnlineSyncState.objects.create(
        environment=Environment.objects.get(name="dev"), component="c1", watermark=newest, last_run_at=timezone.now()
    )
    body = signed_in(users["erin"]).get("/?env=dev").content.decode()
    assert f'newest value from <time datetime="{newest.isoformat()[:19]}' in body
    assert "7\xa0minutes ago" in body


def test_home_for_an_empty_environment(users, catalog):
    body = signed_in(users["erin"]).get("/?env=prod").content.decode()
    assert "Environment prod" in body
    assert "not provisioned yet" in body
    assert "Nothing waits for review." in body


# Catalog


def test_feature_list_filters_and_paginates_in_the_database(users, loaded, django_assert_max_num_queries):
    client = signed_in(users["erin"])
    response = client.get("/features/?env=dev")
    page = response.context["page"]
    assert page.paginator.count == 932
    assert len(page.object_list) == 50
    assert "Page 1 of 19" in response.content.decode()
    online = client.get("/features/?env=dev&online=true&status=active").context["page"]
    assert online.paginator.count == 32
    c2 = client.get("/features/?env=dev&component=c2&dtype=float64").context["page"]
    assert c2.paginator.count == Feature.objects.filter(component__key="c2", dtype="float64").count()
    owned = client.get("/features/?env=dev&owner=team-greeks").context["page"]
    assert owned.paginator.count == 98
    searched = client.get("/features/?env=dev&q=straddle").content.decode()
    assert "atm_straddle_premium" in searched
    assert client.get("/features/?env=dev&online=maybe").context["filters"].online == ""
    last = client.get("/features/?env=dev&page=19").context["page"]
    assert len(last.object_list) == 932 - 18 * 50
    # One page costs a bounded number of queries, whatever the catalog's size (count + slice, no Python loop).
    with django_assert_max_num_queries(12):
        client.get("/features/?env=dev&page=3&q=premium")


def test_feature_page(users, catalog):
    response = signed_in(users["erin"]).get("/features/dev/atm_straddle_premium/")
    body = response.content.decode()
    assert "arched-bot-269016.market_regime_dev.c1_features.atm_straddle_premium" in body
    assert "instrument_minute_online" in body  # online view membership
    assert f"<dd>{rules.ttl_format(172800)} <span" in body  # TTL: 48 hours, as the catalog writes it
    assert "feature.create" in body  # history from the audit log
    assert "v1" in body
    graph = response.context["graph"]
    kinds = {e["data"]["kind"] for e in graph["elements"] if e["group"] == "nodes"}
    assert kinds == {"source", "component", "feature", "column", "table", "view", "online"}
    readers = [r["kind"] for r in response.context["readers"]]
    assert readers == ["BigQuery column", "BigQuery view", "Online feature view"]


def test_component_and_team_pages(users, catalog):
    client = signed_in(users["erin"])
    component = client.get("/components/c1/?env=dev")
    assert component.context["summary"].active_features == 150
    assert component.context["owner"] == "team-straddle"
    assert "market_regime_dev.c1_features" in component.content.decode()
    assert signed_in(users["erin"]).get("/components/c9/").status_code == 404
    team = client.get("/teams/team-straddle/?env=dev")
    body = team.content.decode()
    assert "alice" in body
    assert "bob" in body
    assert team.context["page"].paginator.count == 150
    assert client.get("/teams/nobody/").status_code == 404


# Change requests


def test_change_request_list_filters_by_state(users, proposed, specs):
    client = signed_in(users["erin"])
    body = client.get("/change-requests/?state=proposed").content.decode()
    assert f"CR-{proposed.pk}" in body
    assert f"CR-{proposed.pk}" not in client.get("/change-requests/?state=applied").content.decode()
    assert client.get("/change-requests/?env=dev&state=bogus").status_code == 200


def test_detail_shows_the_plan_as_a_diff_grouped_by_component(users, catalog, specs):
    def breaking(spec):
        spec["features"][0]["dtype"] = "string"
        spec["features"][1]["description"] = "Reworded."

    cr = submit(users, specs, mutate=breaking)
    response = signed_in(users["erin"]).get(f"/change-requests/{cr.pk}/")
    body = response.content.decode()
    assert [g.component for g in response.context["groups"]] == ["c1"]
    assert "Breaking: 1 change" in body
    assert 'class="change breaking"' in body
    assert "float64" in body
    assert "string" in body
    assert "Cost this plan adds" in body
    assert "/month" in body


def test_a_viewer_sees_the_plan_but_is_not_offered_review(users, proposed):
    client = signed_in(users["erin"])
    body = client.get(f"/change-requests/{proposed.pk}/").content.decode()
    assert "Component c1" in body
    assert "Reworded for the console test." in body
    assert f'action="/change-requests/{proposed.pk}/approve/"' not in body
    assert "only reviewers, admins and members of an owning team may review" in body
    response = client.post(f"/change-requests/{proposed.pk}/approve/", {"comment": "sneaky"}, follow=True)
    assert response.status_code == 403
    assert "only reviewers" in response.content.decode()
    proposed.refresh_from_db()
    assert proposed.state == "proposed"


def test_the_author_is_not_offered_approval_and_sees_why(users, catalog, specs):
    cr = submit(users, specs, author="alice")
    client = signed_in(users["alice"])
    body = client.get(f"/change-requests/{cr.pk}/").content.decode()
    assert (
        "Approve"
        not in re.sub(r"<h2 id=\"review-h\">Review</h2>", "", body).split('id="review"')[1].split("</section>")[0]
    )
    assert "the author of a change request never reviews it" in body
    response = client.post(f"/change-requests/{cr.pk}/approve/", {"comment": "mine"}, follow=True)
    assert response.status_code == 403
    assert "never reviews" in response.content.decode()
    cr.refresh_from_db()
    assert cr.state == "proposed"


def test_the_registrar_is_told_it_never_approves(users, catalog, specs):
    cr = submit(users, specs, author="alice")
    body = signed_in(users["dave"]).get(f"/change-requests/{cr.pk}/").content.decode()
    assert "a registrar (CI identity) may submit and read, never approve" in body


def test_an_owning_team_member_approves_through_the_form(users, proposed):
    client = signed_in(users["bob"])
    page = client.get(f"/change-requests/{proposed.pk}/")
    assert page.context["review"]["allowed"] is True
    assert f'action="/change-requests/{proposed.pk}/approve/"' in page.content.decode()
    response = client.post(
        f"/change-requests/{proposed.pk}/approve/",
        {"comment": "Looks right.", "plan_hash": proposed.plan_hash},
    )
    assert response.status_code == 302
    assert response["Location"].endswith(f"/change-requests/{proposed.pk}/#run")
    proposed.refresh_from_db()
    assert proposed.state == "approved"
    assert proposed.applied_revision == 2
    run = ProvisioningRun.objects.get(change_request=proposed)
    assert run.state == "queued"
    after = client.get(response["Location"])
    body = after.content.decode()
    assert any("approved and applied to dev as revision 2" in m for m in messages_of(after))
    assert "Looks right." in body
    assert f'hx-get="/runs/{run.pk}/progress/"' in body  # live progress while queued
    assert "you already approved this plan" in body or "reviews are closed" in body


def test_an_approval_that_is_not_enough_says_what_is_missing(users, proposed):
    client = signed_in(users["carol"])  # a reviewer, not on the owning team
    response = client.post(f"/change-requests/{proposed.pk}/approve/", {"plan_hash": proposed.plan_hash}, follow=True)
    assert any("Still needed" in m and "team-straddle" in m for m in messages_of(response))
    proposed.refresh_from_db()
    assert proposed.state == "proposed"


def test_approving_a_stale_plan_is_refused_with_a_message(users, proposed):
    response = signed_in(users["bob"]).post(
        f"/change-requests/{proposed.pk}/approve/", {"plan_hash": "0" * 64}, follow=True
    )
    assert response.status_code == 200
    assert any("the plan changed since you reviewed it" in m for m in messages_of(response))


def test_approval_after_the_environment_moved_offers_replan(users, catalog, specs):
    first = submit(users, specs, title="first")
    second_specs = [dict(s) for s in specs]
    second = submit(users, second_specs, component="c2", author="dave", title="second")
    change_request_approve(user=users["bob"], change_request_id=first.pk)
    page = signed_in(users["gina"]).get(f"/change-requests/{second.pk}/")
    assert page.context["review"]["allowed"] is False
    assert "must be re-planned" in page.context["review"]["reason"]
    response = signed_in(users["gina"]).post(f"/change-requests/{second.pk}/approve/", follow=True)
    assert any("re-plan" in m for m in messages_of(response))  # the service's 409, as a message
    author = signed_in(users["dave"])
    assert author.get(f"/change-requests/{second.pk}/").context["can_replan"] is True
    replanned = author.post(f"/change-requests/{second.pk}/replan/", follow=True)
    assert any("re-planned" in m for m in messages_of(replanned))
    second.refresh_from_db()
    assert second.base_revision == Environment.objects.get(name="dev").revision


def test_reject_needs_a_comment_and_then_rejects(users, proposed):
    client = signed_in(users["carol"])
    response = client.post(f"/change-requests/{proposed.pk}/reject/", {"comment": ""}, follow=True)
    assert any("required" in m for m in messages_of(response))
    proposed.refresh_from_db()
    assert proposed.state == "proposed"
    response = client.post(f"/change-requests/{proposed.pk}/reject/", {"comment": "Not this week."}, follow=True)
    proposed.refresh_from_db()
    assert proposed.state == "rejected"
    assert "reviews are closed" in response.content.decode()


def test_review_actions_accept_only_post(users, proposed):
    client = signed_in(users["bob"])
    assert client.get(f"/change-requests/{proposed.pk}/approve/").status_code == 405
    assert client.get(f"/change-requests/{proposed.pk}/reject/").status_code == 405
    assert client.post(f"/change-requests/{proposed.pk}/").status_code == 405
    assert client.post("/change-requests/9999/approve/").status_code == 404


def test_csrf_is_enforced_on_approval(users, proposed):
    client = Client(enforce_csrf_checks=True)
    client.force_login(users["bob"])
    refused = client.post(f"/change-requests/{proposed.pk}/approve/", {"comment": "no token"})
    assert refused.status_code == 403
    proposed.refresh_from_db()
    assert proposed.state == "proposed"
    page = client.get(f"/change-requests/{proposed.pk}/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.content.decode()).group(1)
    accepted = client.post(
        f"/change-requests/{proposed.pk}/approve/", {"comment": "with token", "csrfmiddlewaretoken": token}
    )
    assert accepted.status_code == 302
    proposed.refresh_from_db()
    assert proposed.state == "approved"


def test_promote_an_applied_change_request(users, proposed, provisioned):
    change_request_approve(user=users["bob"], change_request_id=proposed.pk)
    run = ProvisioningRun.objects.get(change_request=proposed)
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    viewer = signed_in(users["erin"]).get(f"/change-requests/{proposed.pk}/")
    assert viewer.context["can_promote"] is False
    client = signed_in(users["dave"])
    assert client.get(f"/change-requests/{proposed.pk}/").context["can_promote"] is True
    response = client.post(f"/change-requests/{proposed.pk}/promote/", {"environment": "staging"}, follow=True)
    # staging has no catalog loaded in this fixture: the whole c1 is planned as new there.
    assert any("promoted as CR-" in m for m in messages_of(response))
    assert ChangeRequest.objects.filter(promoted_from=proposed, environment__name="staging").exists()


# Provisioning runs


def test_run_pages_and_live_progress(users, proposed):
    change_request_approve(user=users["bob"], change_request_id=proposed.pk)
    bootstrap = ProvisioningRun.objects.get(revision=1, environment__name="dev")
    run = ProvisioningRun.objects.get(change_request=proposed)
    client = signed_in(users["erin"])
    listing = client.get("/runs/?env=dev&state=queued").content.decode()
    assert f"#{run.pk}" in listing
    detail = client.get(f"/runs/{run.pk}/").content.decode()
    assert f'hx-get="/runs/{run.pk}/progress/"' in detail
    assert 'aria-live="polite"' in detail
    assert "Planned steps" in detail
    queued = client.get(f"/runs/{run.pk}/progress/")
    assert queued.status_code == 200  # keep polling
    assert runner.run_execute(run_id=bootstrap.pk, worker="test") == "succeeded"
    assert runner.run_execute(run_id=run.pk, worker="test") == "succeeded"
    finished = client.get(f"/runs/{run.pk}/progress/")
    assert finished.status_code == 286  # htmx: stop polling
    body = finished.content.decode()
    assert "succeeded" in body
    assert "applied" in body  # the change request's state, in the same fragment
    assert client.get(f"/runs/{run.pk}/").status_code == 200
    assert client.get("/runs/9999/").status_code == 404


def test_a_failed_run_shows_its_error(users, catalog, monkeypatch):
    run = ProvisioningRun.objects.get(revision=1, environment__name="dev")
    from provisioning.errors import PermanentStoreError

    def broken(*args, **kwargs):
        raise PermanentStoreError("the dataset is read-only for this service account")

    monkeypatch.setattr(runner, "_execute_step", broken)
    assert runner.run_execute(run_id=run.pk, worker="test") == "failed"
    body = signed_in(users["erin"]).get(f"/runs/{run.pk}/").content.decode()
    assert "the dataset is read-only for this service account" in body
    assert 'role="alert"' in body


# Backfills


def test_backfill_list_offers_the_form_only_to_those_who_may_start_one(users, catalog):
    owner = signed_in(users["alice"]).get("/backfills/")
    assert owner.context["may_request"] is True
    assert 'action="/backfills/start/"' in owner.content.decode()
    viewer = signed_in(users["erin"]).get("/backfills/")
    assert viewer.context["may_request"] is False
    assert "only admins, reviewers and members of the owning teams may start backfills" in viewer.content.decode()


def test_backfill_form_reports_service_errors_as_messages(users, catalog, tmp_path):
    client = signed_in(users["alice"])
    response = client.post(
        "/backfills/start/",
        {"environment": "dev", "source": str(tmp_path / "nowhere"), "components": ["c1"], "reason": "test"},
        follow=True,
    )
    assert response.status_code == 200
    assert messages_of(response)
    assert not Backfill.objects.exists()
    refused = signed_in(users["erin"]).post(
        "/backfills/start/", {"environment": "dev", "source": str(tmp_path), "components": ["c1"]}, follow=True
    )
    assert refused.status_code == 403
    assert not Backfill.objects.exists()
    invalid = client.post("/backfills/start/", {"environment": "qa", "source": ""}, follow=True)
    assert any("environment" in m.lower() for m in messages_of(invalid))


def test_backfill_detail_progress_and_cancel(users, catalog):
    dev = Environment.objects.get(name="dev")
    backfill = Backfill.objects.create(
        environment=dev, components=["c1"], source="/data/parquet", reason="requested", requested_by=users["alice"]
    )
    viewer = signed_in(users["erin"])
    page = viewer.get(f"/backfills/{backfill.pk}/")
    assert page.status_code == 200
    assert f'hx-get="/backfills/{backfill.pk}/progress/"' in page.content.decode()
    assert page.context["may_cancel"] is False
    assert viewer.get(f"/backfills/{backfill.pk}/progress/").status_code == 200
    denied = viewer.post(f"/backfills/{backfill.pk}/cancel/", follow=True)
    assert denied.status_code == 403
    assert "only the requester" in denied.content.decode()
    backfill.refresh_from_db()
    assert backfill.state == "pending"
    owner = signed_in(users["alice"])
    assert owner.get(f"/backfills/{backfill.pk}/").context["may_cancel"] is True
    owner.post(f"/backfills/{backfill.pk}/cancel/")
    backfill.refresh_from_db()
    assert backfill.state == "cancelled"
    assert viewer.get(f"/backfills/{backfill.pk}/progress/").status_code == 286
    again = owner.post(f"/backfills/{backfill.pk}/cancel/", follow=True)
    assert any("cannot be cancelled" in m for m in messages_of(again))


# Lineage


def test_lineage_overview_component_and_feature(users, loaded):
    client = signed_in(users["erin"])
    overview = client.get("/lineage/?env=dev").context["graph"]
    nodes = [e for e in overview["elements"] if e["group"] == "nodes"]
    assert len(nodes) == 8 * 3 + 2  # Parquet, component, table per component; the view; the online view
    component = client.get("/lineage/?env=dev&component=c8").context["graph"]
    nodes = [e for e in component["elements"] if e["group"] == "nodes"]
    assert len(nodes) == 48 * 3 + 4
    response = client.get("/lineage/?env=dev&feature=atm_straddle_premium")
    assert response.context["graph"]["focus"] == "feature:atm_straddle_premium"
    body = response.content.decode()
    assert "Impact: what reads atm_straddle_premium" in body
    assert "training_dataset" in body
    assert 'id="lineage-data"' in body
    assert client.get("/lineage/?env=dev&feature=missing").status_code == 404


def test_lineage_impact_lists_proposed_changes(users, proposed):
    name = Feature.objects.filter(component__key="c1").order_by("name").values_list("name", flat=True)
    spec_name = next(n for n in name if n == proposed.plan["changes"][0]["feature"])
    response = signed_in(users["erin"]).get(f"/lineage/?env=dev&feature={spec_name}")
    assert f"CR-{proposed.pk}" in response.content.decode()


# Costs and drift


def test_costs_page_charts_data(users, proposed, provisioned):
    change_request_approve(user=users["bob"], change_request_id=proposed.pk)
    response = signed_in(users["erin"]).get("/costs/?env=dev")
    data = response.context["chart_data"]
    assert data["by_table"]["labels"] == ["c1_features", "c2_features"]
    assert data["by_environment"]["labels"] == ["dev", "staging", "prod"]
    assert data["online"]["range"][0] == [949.0, 4745.0]  # 2..10 Bigtable nodes x 730 h x $0.65
    assert data["changes"]["labels"] == ["r1 load", f"r2 CR-{proposed.pk}"]
    assert data["changes"]["storage_usd_per_month"][0] > 0  # the catalog load's modelled storage
    body = response.content.decode()
    assert 'id="cost-data"' in body
    assert "chart-4.6.1.umd.min.js" in body
    assert "nothing applied yet" in body  # staging and prod


def test_drift_page_and_run_now(users, provisioned):
    client = signed_in(users["erin"])
    assert "No drift report yet." in client.get("/drift/").content.decode()
    response = client.post("/drift/dev/run/", follow=True)
    assert any("none. The stores match the catalog" in m for m in messages_of(response))
    report = DriftReport.objects.get(environment__name="dev")
    assert report.trigger == "on_demand"
    assert report.consistent is True
    assert client.get("/drift/dev/run/").status_code == 405
    assert client.post("/drift/qa/run/").status_code == 404


def test_drift_findings_are_grouped(users, provisioned):
    from provisioning.backends import offline_store_for

    dev = Environment.objects.get(name="dev")
    with offline_store_for(dev).connect() as connection:  # type: ignore[attr-defined]
        connection.execute("ALTER TABLE market_regime_dev.c1_features ADD COLUMN rogue DOUBLE")
        connection.execute('ALTER TABLE market_regime_dev.c2_features DROP COLUMN "net_delta_exposure"')
    client = signed_in(users["erin"])
    response = client.post("/drift/dev/run/", follow=True)
    assert any("finding" in m for m in messages_of(response))
    body = response.content.decode()
    assert "In the stores, not in the catalog" in body
    assert "market_regime_dev.c1_features.rogue" in body
    assert "In the catalog, missing from the stores" in body
