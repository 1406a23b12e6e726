import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()
# The URL configuration imports every view (and with them pandas and pyarrow): at start-up, not in a worker's
# first request, which would otherwise take seconds on a busy machine.
get_resolver().url_patterns  # noqa: B018
