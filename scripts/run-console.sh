#!/usr/bin/env bash
# Serves the console and runs a Celery worker (with the beat schedule) beside it until Ctrl-C stops both.
set -euo pipefail
BIN=${BIN:-.venv/bin}
PORT=${PORT:-8000}
DATA_DIR=${DATA_DIR:-$PWD/var}
export DATA_DIR

"$BIN/python" manage.py collectstatic --noinput >/dev/null

"$BIN/celery" -A config worker --beat --schedule "$DATA_DIR/celerybeat-schedule" \
  -Q provisioning --concurrency 2 --loglevel INFO &
worker=$!
stop() {
  kill -TERM "$worker" 2>/dev/null || true
  wait "$worker" 2>/dev/null || true
}
trap stop EXIT INT TERM

echo "Feature Catalog Console: http://127.0.0.1:$PORT/  (API docs: http://127.0.0.1:$PORT/api/docs/; Ctrl-C stops)"
"$BIN/gunicorn" config.wsgi:application --bind "127.0.0.1:$PORT" --workers 2 --threads 4 \
  --access-logfile - --graceful-timeout 5
