"""The references for bench/online_bench.py's HTTP figures: the same lookup as the console's
`POST /api/v1/online-features/` with nothing around it (no framework, no catalog checks, no TTLs), a token
compared, a JSON body read, one primary-key lookup of the packed row per entity in the same SQLite file, the
row decoded as the store packs it (marshal; JSON text for older rows; either row layout of provisioning/online/
base.py). `application` serves it as a WSGI app, bench/online_minimal_asgi.py as an ASGI one.

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


def _item(stored: Any, name: str) -> tuple[Any, float] | None:
    if type(stored) is dict:  # {feature: [value, event epoch seconds]}
        item = stored.get(name)
        return (item[0], item[1]) if item else None
    common, values, stamps = stored  # (common event epoch seconds, {feature: value}, {feature: other seconds})
    return (values[name], stamps.get(name, common)) if name in values else None


def read(authorization: str | None, body: bytes) -> tuple[int, bytes]:
    """The status and JSON body of a read."""
    if authorization != AUTHORIZATION:
        return 401, b'{"message": "invalid token"}'
    request = json.loads(body)
    if not hasattr(_local, "connection"):
        _local.connection = sqlite3.connect(os.environ["FCC_BENCH_ONLINE_DB"])
    results = []
    for entity in request["entity_ids"]:
        row = _local.connection.execute(
            "SELECT values_json FROM online_values WHERE entity_id = ?", [entity]
        ).fetchone()
        packed = row[0] if row else None
        stored = (marshal.loads(packed) if type(packed) is bytes else json.loads(packed)) if packed else {}  # noqa: S302
        values = {}
        for name in request["features"]:
            item = _item(stored, name)
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
    return 200, json.dumps({"results": results}).encode()


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    status, payload = read(
        environ.get("HTTP_AUTHORIZATION"), environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    )
    start_response("200 OK" if status == 200 else "401 Unauthorized", [("Content-Type", "application/json")])
    return [payload]
