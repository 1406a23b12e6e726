import gc
import os
from collections.abc import Iterable
from wsgiref.types import StartResponse, WSGIEnvironment

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_application = get_wsgi_application()
# The URL configuration imports every view (and with them pandas and pyarrow): at start-up, not in a worker's
# first request, which would otherwise take seconds on a busy machine.
get_resolver().url_patterns  # noqa: B018

from api.online_fast_path import ONLINE_PATH, OnlineReadFastPath  # noqa: E402 - needs the apps

# Online reads are served in front of Django, which answers whatever the fast path does not (api/online_fast_path.py).
online_read = OnlineReadFastPath(django_application)


def application(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    if environ.get("PATH_INFO") == ONLINE_PATH and environ.get("REQUEST_METHOD") == "POST":
        return online_read(environ, start_response)
    return django_application(environ, start_response)


# The start-up heap (Django, pandas, pyarrow: hundreds of thousands of objects) is out of the collector's reach:
# an old-generation collection would otherwise scan all of it, a pause in whichever request triggers it.
gc.collect()
gc.freeze()
