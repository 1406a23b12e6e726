#!/usr/bin/env bash
# Creates the BigQuery emulator's own virtual environment (local-bigquery on CPython 3.13), which the offline
# store tests start and stop (tests/bigquery_emulator.py). Idempotent: a venv built from the same lock file
# is left as it is. It is kept apart from the application's venv because installing the emulator there
# downgrades protobuf and sqlglot.
#
#   FCC_EMULATOR_VENV    where the venv goes (default .venv-bqemu, relative to the repository)
#   FCC_EMULATOR_PYTHON  a Python 3.13 interpreter (default: python3.13 on PATH, then pyenv's 3.13)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${FCC_EMULATOR_VENV:-.venv-bqemu}"
LOCK="scripts/bigquery-emulator-requirements.txt"
STAMP="$VENV/.fcc-lock.sha256"
want="$(sha256sum "$LOCK" | cut -d' ' -f1)"

if [[ -x "$VENV/bin/local-bigquery" && -f "$STAMP" && "$(cat "$STAMP")" == "$want" ]]; then
    exit 0
fi

find_python() {
    local candidate
    for candidate in "${FCC_EMULATOR_PYTHON:-}" python3.13 "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.13*/bin/python3.13; do
        [[ -n "$candidate" ]] || continue
        if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if ! python="$(find_python)"; then
    echo "bigquery-emulator-setup: no Python 3.13 found (local-bigquery 0.4.0 needs it); set FCC_EMULATOR_PYTHON" >&2
    exit 1
fi

echo "bigquery-emulator-setup: building $VENV with $python" >&2
rm -rf "$VENV"
"$python" -m venv "$VENV"
# --no-deps: the lock holds every package, and local-bigquery's declared duckdb>=2.0.0 is knowingly overridden.
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: -r "$LOCK"

# The emulator must find duckdb 1.5.5 and an extension file for each extension it loads.
"$VENV/bin/python" - <<'PY'
import glob
import importlib.metadata
import os
import sys

import duckdb

assert duckdb.__version__ == "1.5.5", duckdb.__version__
importlib.metadata.version("local-bigquery")
site = os.path.dirname(os.path.dirname(duckdb.__file__))
found = sorted(glob.glob(os.path.join(site, "duckdb_extension_*", "extensions", "v1.5.5", "*.duckdb_extension")))
names = {os.path.basename(path).split(".")[0] for path in found}
missing = {"ducklake", "icu", "spatial"} - names
if missing:
    sys.exit(f"bigquery-emulator-setup: extension files missing: {sorted(missing)}")
PY
echo "$want" >"$STAMP"
echo "bigquery-emulator-setup: ready ($VENV/bin/local-bigquery)" >&2
