"""WSGI entry point for uWSGI (--module coffeehouse.wsgi) and gunicorn (coffeehouse.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffeehouse.settings")

application = get_wsgi_application()
