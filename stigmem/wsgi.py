"""WSGI entry point used by gunicorn (see ``manage.py runnode``)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stigmem.settings")
application = get_wsgi_application()
