"""The reference endpoint for bench/online_bench.py's HTTP figures: the same lookup as the console's
`POST /api/v1/online-features/` with nothing around it (no framework, no catalog checks, no TTLs), a token
compared, a JSON body read, one primary-key lookup of the packed row per entity in the same SQLite file, the
row decoded as the store packs it (marshal; JSON text for older rows).

    FCC_BENCH_ONLINE_DB=... FCC_BENCH_TOKEN=... gunicorn --pythonpath bench online_minimal_app:application
"""

import datetime as dt
import json
import marshal
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from typing import Any

AUTHORIZATION = f"Token {os.environ.get('FCC_BENCH_TOKEN', '')}"
_local = threading.local()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ.get("HTTP_AUTHORIZATION") != AUTHORIZATION:
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"message": "invalid token"}']
    body = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    if not hasattr(_local, "connection"):
        _local.connection = sqlite3.connect(os.environ["FCC_BENCH_ONLINE_DB"])
    results = []
    for entity in body["entity_ids"]:
        row = _local.connection.execute(
            "SELECT values_json FROM online_values WHERE entity_id = ?", [entity]
        ).fetchone()
        packed = row[0] if row else None
        stored = (marshal.loads(packed) if type(packed) is bytes else json.loads(packed)) if packed else {}  # noqa: S302
        values = {}
        for name in body["features"]:
            item = stored.get(name)
            values[name] = (
                {
                    "value": item[0],
                    "event_time": dt.datetime.fromtimestamp(item[1], dt.UTC).isoformat(),
                    "status": "present",
                }
                if item
                else {"value": None, "event_time": None, "status": "missing"}
            )
        results.append({"entity_id": entity, "values": values})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"results": results}).encode()]
