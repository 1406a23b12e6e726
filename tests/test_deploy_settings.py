import os
import secrets
import subprocess
import sys
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)


def _check(tmp_path, **extra):
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")},
        "DATA_DIR": str(tmp_path),
        "DJANGO_ALLOWED_HOSTS": "console.example.org",
        **extra,
    }
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_production_settings_pass_check_deploy(tmp_path):
    result = _check(tmp_path, DJANGO_PRODUCTION="1", DJANGO_SECRET_KEY=secrets.token_urlsafe(60))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_refuses_the_embedded_secret_key(tmp_path):
    result = _check(tmp_path, DJANGO_PRODUCTION="1")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr


def test_the_laptop_defaults_do_not_pass_check_deploy(tmp_path):
    assert _check(tmp_path).returncode != 0
