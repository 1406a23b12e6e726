"""Shared fixtures. Personas: alice owns c1's team, bob is on it, gina owns c2's team, carol reviews,
dave is the CI registrar, erin only views, root is an admin."""

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps as django_apps
from django.conf import settings
from django.contrib.auth.models import Group
from rest_framework.test import APIClient

from api.models import ApiToken
from catalog.models import Team, TeamMembership
from catalog.reference import reference_data_ensure
from catalog.services import catalog_load
from catalog.specs import load_spec_files

SPECS_DIR = Path(settings.FCC_SPECS_DIR)


@pytest.fixture(autouse=True)
def _no_task_dispatch(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests record what would be enqueued instead of talking to a broker; worker tests opt out."""
    if request.node.get_closest_marker("worker"):
        return
    from workers import tasks

    sent: list[Any] = []
    for task in (tasks.provisioning_run_execute, tasks.backfill_execute_task, tasks.training_dataset_task):
        monkeypatch.setattr(task, "delay", lambda *a, _task=task, **k: sent.append((_task.name, a)))


@pytest.fixture(autouse=True)
def _backfill_sources_under_test_folders(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Tests write their Parquet sources in their own temporary folders: those may be read by requested
    backfills (tests/test_backfill.py checks that other folders may not)."""
    settings.FCC_BACKFILL_SOURCE_ROOTS = [str(tmp_path_factory.getbasetemp())]


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """The default hasher takes about half a second a user; every test creating the personas would pay it."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def reference(db: None) -> None:
    # Transactional tests flush the database, data migrations included: put reference data back.
    reference_data_ensure(django_apps)


@pytest.fixture
def users(reference: None, django_user_model: Any) -> dict[str, Any]:
    def make(name: str, *, group: str | None = None, superuser: bool = False) -> Any:
        user = django_user_model.objects.create_user(
            username=name, password="pw-" + name, is_superuser=superuser, is_staff=superuser
        )
        if group:
            user.groups.add(Group.objects.get(name=group))
        return user

    people = {
        "alice": make("alice"),
        "bob": make("bob"),
        "gina": make("gina"),
        "carol": make("carol", group="reviewer"),
        "dave": make("dave", group="registrar"),
        "erin": make("erin", group="viewer"),
        "root": make("root", superuser=True),
    }
    straddle = Team.objects.get(slug="team-straddle")
    greeks = Team.objects.get(slug="team-greeks")
    TeamMembership.objects.create(team=straddle, user=people["alice"], role=TeamMembership.Role.OWNER)
    TeamMembership.objects.create(team=straddle, user=people["bob"])
    TeamMembership.objects.create(team=greeks, user=people["gina"], role=TeamMembership.Role.OWNER)
    return people


@pytest.fixture
def client_for(users: dict[str, Any]) -> Callable[[str | None], APIClient]:
    def make(name: str | None) -> APIClient:
        client = APIClient()
        if name is not None:
            _, secret = ApiToken.issue(user=users[name], name="test")
            client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client

    return make


@pytest.fixture(scope="session")
def real_specs() -> list[dict[str, Any]]:
    return load_spec_files(SPECS_DIR)


@pytest.fixture
def specs(real_specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A deep copy of the real catalog's spec documents, for a test to edit."""
    return copy.deepcopy(real_specs)


def mini_spec(
    component: str = "c1", owner: str = "team-straddle", names: tuple[str, ...] = ("alpha", "beta", "gamma_ratio")
) -> dict[str, Any]:
    return {
        "component": component,
        "entity_type": "instrument_minute",
        "owner": owner,
        "features": [
            {
                "name": f"{component}_{name}",
                "dtype": "float64",
                "description": f"{name} of {component}.",
                "ttl": "48h",
                "online": i == 0,
                "source": f"component_0{component[1:]}.{name.replace('_', '')}",
                "tags": ["minute"],
            }
            for i, name in enumerate(names)
        ],
    }


@pytest.fixture
def isolated_stores(tmp_path: Path, settings: Any) -> dict[str, Any]:
    """Every environment's offline and online stores in this test's own folder."""
    settings.FCC_STORES = {
        env: {
            "offline_options": {"path": str(tmp_path / "offline")},
            "online_options": {"path": str(tmp_path / "online")},
        }
        for env in ("dev", "staging", "prod")
    }
    return dict(settings.FCC_STORES)


@pytest.fixture
def loaded(reference: None) -> None:
    """The real 932-feature catalog applied to dev (revision 1)."""
    catalog_load(specs_dir=SPECS_DIR, environment_names=["dev"])
