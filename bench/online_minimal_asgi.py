"""The ASGI reference for bench/online_bench.py's HTTP figures: bench/online_minimal_app.py's lookup served as a
raw ASGI app (no framework), run by uvicorn with uvloop and httptools. The lookup (a primary-key read of a local
SQLite file, tens of microseconds) runs on the event loop, as a minimal app would run it.

    FCC_BENCH_ONLINE_DB=... FCC_BENCH_TOKEN=... uvicorn bench.online_minimal_asgi:application
"""

from collections.abc import Awaitable, Callable
from typing import Any

from bench.online_minimal_app import read

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
JSON_HEADERS = [(b"content-type", b"application/json")]


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    authorization = next((v for k, v in scope["headers"] if k == b"authorization"), b"").decode("latin-1")
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    status, payload = read(authorization or None, body)
    await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
    await send({"type": "http.response.body", "body": payload})
