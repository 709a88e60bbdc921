"""Settings of the coffeehouse demo: production-shaped (DEBUG off), overridable from the environment.

The conf.d/ programs run it as is. In production set DJANGO_SECRET_KEY, COFFEEHOUSE_ALLOWED_HOSTS (your
site's names; keep the one your health checks send as Host) and the paths below, in the program's
`environment` table.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-not-secret-set-DJANGO_SECRET_KEY-in-production")
DEBUG = os.environ.get("COFFEEHOUSE_DEBUG", "") == "1"
# Django answers 400 to any other Host; procguard's health checks send `host = "localhost"`.
ALLOWED_HOSTS = os.environ.get("COFFEEHOUSE_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "menu",
]

MIDDLEWARE = [
    "coffeehouse.release.release_header",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "coffeehouse.urls"
WSGI_APPLICATION = "coffeehouse.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("COFFEEHOUSE_DB", str(BASE_DIR / "db.sqlite3")),
        # Five servers share one SQLite file in the demo: wait for a writer instead of failing at once.
        "OPTIONS": {"timeout": 20},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# `manage.py collectstatic` (the coffeehousecollectstatic job) copies every app's static files here;
# uWSGI (--static-map) or nginx serve them from there, the other servers through coffeehouse/urls.py.
STATIC_URL = "static/"
STATIC_ROOT = os.environ.get("COFFEEHOUSE_STATIC_ROOT", str(BASE_DIR / "staticfiles"))

# A file whose existence makes /health/ answer 503 (take one server out of rotation by hand).
HEALTH_DOWN_FILE = os.environ.get("COFFEEHOUSE_HEALTH_DOWN_FILE", str(BASE_DIR / "health-down"))

# Which release this is, sent in every response's X-Coffeehouse-Release header: the name of the release
# directory (BASE_DIR with symlinks resolved: "3" for /srv/coffeehouse/releases/3 reached through the
# `current` symlink, docs/deploys.md; "demo" for this checkout), unless COFFEEHOUSE_RELEASE says.
RELEASE = os.environ.get("COFFEEHOUSE_RELEASE") or BASE_DIR.name

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Errors go to stderr (procguard's log files) even with DEBUG off; Django's default only mails them.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django": {"handlers": ["stderr"], "level": "WARNING"}},
}
