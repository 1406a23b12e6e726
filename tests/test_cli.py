"""`fcc` end to end: the CLI in-process against the real console served by live_server.

Transactional tests flush the database, so every test that reaches the server recreates the reference data
(`users`) and loads the real catalog into dev (`loaded`). dave is the CI registrar the token belongs to.
"""

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from rest_framework.test import APIClient

from api.cli import EXIT_BREAKING, EXIT_INVALID, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, main
from api.models import ApiToken
from catalog.models import AuditLogEntry, ChangeRequest
from provisioning.models import ProvisioningRun
from tests.conftest import SPECS_DIR

UNREACHABLE = "http://127.0.0.1:9"
NEW_FEATURE = {
    "name": "atm_straddle_premium_ema_99",
    "dtype": "float64",
    "description": "99-minute EMA of the ATM straddle premium, in index points.",
    "ttl": "48h",
    "online": False,
    "source": "component_01.atmStraddlePremiumEma99",
    "tags": ["straddle", "minute"],
}

Cli = Callable[..., int]


@pytest.fixture
def cli(live_server: Any, users: dict[str, Any], loaded: None, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Runs `fcc COMMAND --url <live server> --token <dave's> --env dev ARGS...` and returns the exit code."""
    monkeypatch.delenv("FCC_URL", raising=False)
    monkeypatch.delenv("FCC_TOKEN", raising=False)
    _, secret = ApiToken.issue(user=users["dave"], name="ci")

    def run(command: str, *args: str) -> int:
        return main([command, "--url", live_server.url, "--token", secret, "--env", "dev", *args])

    return run


def c1_spec() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load((SPECS_DIR / "c1.yaml").read_text(encoding="utf-8"))
    return spec


def write_spec(directory: Path, spec: dict[str, Any], name: str = "c1.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


@pytest.mark.django_db(transaction=True)
def test_plan_of_the_unchanged_catalog_has_no_changes(cli, capsys):
    assert cli("plan", str(SPECS_DIR)) == EXIT_OK
    assert "No changes" in capsys.readouterr().out

    assert cli("plan", "--json", "--fail-on-breaking", str(SPECS_DIR)) == EXIT_OK
    body = json.loads(capsys.readouterr().out)
    assert body["plan"]["is_empty"] is True
    assert body["plan_hash"]


@pytest.mark.django_db(transaction=True)
def test_plan_of_a_new_feature_prints_its_create_line(cli, capsys, tmp_path):
    spec = c1_spec()
    spec["features"].append(NEW_FEATURE)
    path = write_spec(tmp_path, spec)

    assert cli("plan", "--fail-on-breaking", str(path)) == EXIT_OK
    out = capsys.readouterr().out
    assert "+ c1.atm_straddle_premium_ema_99 (create, additive)" in out
    assert "1 to create" in out
    assert ChangeRequest.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_plan_of_invalid_specs_lists_every_problem(cli, capsys, tmp_path):
    spec = c1_spec()
    spec["features"][3]["name"] = "Bad-Name"
    spec["features"][5]["ttl"] = "forever"
    path = write_spec(tmp_path, spec)

    assert cli("plan", str(path)) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "specs[0].features[3].name: name 'Bad-Name' must be snake_case" in err
    assert "[pattern]" in err
    assert "specs[0].features[5].ttl:" in err
    assert "[ttl_format]" in err
    assert str(path) in err


@pytest.mark.django_db(transaction=True)
def test_plan_of_a_removed_feature_is_breaking(cli, capsys, tmp_path):
    spec = c1_spec()
    removed = spec["features"].pop(1)
    path = write_spec(tmp_path, spec)

    assert cli("plan", str(path)) == EXIT_OK
    assert f"- c1.{removed['name']} (deprecate, breaking)" in capsys.readouterr().out

    assert cli("plan", "--fail-on-breaking", str(path)) == EXIT_BREAKING
    captured = capsys.readouterr()
    assert f"- c1.{removed['name']} (deprecate, breaking)" in captured.out
    assert "breaking" in captured.err


@pytest.mark.django_db(transaction=True)
def test_submitted_change_request_is_approved_by_its_owner_and_queues_a_run(cli, capsys, tmp_path, live_server, users):
    spec = c1_spec()
    spec["features"].append(NEW_FEATURE)
    path = write_spec(tmp_path, spec)

    assert cli("submit", "--title", "Add the 99-minute EMA", "--description", "From CI.", str(path)) == EXIT_OK
    out = capsys.readouterr().out
    cr = ChangeRequest.objects.get()
    assert cr.author == users["dave"]
    assert cr.state == "proposed"
    assert cr.title == "Add the 99-minute EMA"
    assert "+ c1.atm_straddle_premium_ema_99 (create, additive)" in out
    assert f"{live_server.url}/api/v1/change-requests/{cr.pk}/" in out

    alice = APIClient()
    _, secret = ApiToken.issue(user=users["alice"], name="review")
    alice.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    response = alice.post(f"/api/v1/change-requests/{cr.pk}/approve/", {"comment": "ok"}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["change_request"]["state"] == "approved"

    cr.refresh_from_db()
    assert cr.state == "approved"
    assert ProvisioningRun.objects.filter(change_request=cr, state="queued").count() == 1
    audit = AuditLogEntry.objects.filter(object_type="change_request", object_id=str(cr.pk))
    actions = set(audit.values_list("action", flat=True))
    assert {"change_request.submit", "change_request.approve"} <= actions


@pytest.mark.django_db(transaction=True)
def test_submit_of_the_unchanged_catalog_creates_nothing(cli, capsys):
    assert cli("submit", str(SPECS_DIR)) == EXIT_OK
    assert "No changes" in capsys.readouterr().out
    assert ChangeRequest.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_submit_with_fail_on_breaking_refuses_a_breaking_change(cli, capsys, tmp_path):
    spec = c1_spec()
    spec["features"].pop(1)
    path = write_spec(tmp_path, spec)

    assert cli("submit", "--fail-on-breaking", str(path)) == EXIT_BREAKING
    assert "nothing was submitted" in capsys.readouterr().err
    assert ChangeRequest.objects.count() == 0


@pytest.mark.django_db(transaction=True)
def test_bad_token_from_the_environment_exits_3(live_server, reference, capsys, monkeypatch):
    monkeypatch.setenv("FCC_URL", live_server.url)
    monkeypatch.setenv("FCC_TOKEN", "not-a-token")
    assert main(["plan", "--env", "dev", str(SPECS_DIR)]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "HTTP 401" in err
    assert "FCC_TOKEN" in err


def test_unreachable_console_exits_3(capsys):
    assert main(["plan", "--url", UNREACHABLE, "--token", "t", "--env", "dev", str(SPECS_DIR)]) == EXIT_UNAVAILABLE
    assert f"cannot reach the console at {UNREACHABLE}" in capsys.readouterr().err


def test_unparsable_yaml_names_the_file(capsys, tmp_path):
    path = tmp_path / "c1.yaml"
    path.write_text("component: c1\nfeatures: [unclosed\n", encoding="utf-8")
    # The files are read before the console is contacted: the unreachable URL is never used.
    assert main(["plan", "--url", UNREACHABLE, "--token", "t", "--env", "dev", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert f"{path}: not valid YAML" in err


def test_missing_spec_path_and_unquoted_date_are_reported(capsys, tmp_path):
    assert main(["plan", "--url", UNREACHABLE, "--token", "t", "--env", "dev", str(tmp_path / "nope")]) == EXIT_INVALID
    assert "no such file or directory" in capsys.readouterr().err

    spec = c1_spec()
    spec["features"][0]["description"] = "2024-01-01"
    path = tmp_path / "c1.yaml"
    path.write_text(yaml.safe_dump(spec).replace("'2024-01-01'", "2024-01-01"), encoding="utf-8")
    assert main(["plan", "--url", UNREACHABLE, "--token", "t", "--env", "dev", str(path)]) == EXIT_INVALID
    assert "features[0].description: 2024-01-01 was read as a date" in capsys.readouterr().err


def test_missing_token_is_a_usage_error(capsys, monkeypatch):
    monkeypatch.delenv("FCC_TOKEN", raising=False)
    assert main(["plan", "--url", UNREACHABLE, "--env", "dev", str(SPECS_DIR)]) == EXIT_USAGE
    assert "no API token" in capsys.readouterr().err
    # argparse's own errors use 64 too: 2 means "breaking".
    assert main(["plan", "--token", "t", "--url", UNREACHABLE]) == EXIT_USAGE


def test_installed_console_script_prints_help():
    script = shutil.which("fcc") or str(Path(sys.executable).parent / "fcc")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert "plan" in result.stdout
    assert "submit" in result.stdout


def test_cli_does_not_import_django():
    # CI machines install the package but run no server: the client must work without settings.
    code = "import sys, api.cli; sys.exit(any(m.split('.')[0] in ('django', 'rest_framework') for m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
