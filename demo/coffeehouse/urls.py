"""URLs of the coffeehouse demo; the websocket route /ws/echo/ lives in coffeehouse/asgi.py."""

from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

from menu import views

urlpatterns = [
    path("", views.index, name="index"),
    path("drinks/<slug:slug>/", views.drink, name="drink"),
    path("health/", views.health, name="health"),
    path("admin/", admin.site.urls),
    # Collected static files for the servers that do not serve them themselves (gunicorn, daphne,
    # uvicorn, hypercorn); uWSGI answers /static/ before Django is reached (--static-map) and so would
    # nginx. Django's serve() is simple and fine for a demo; in production put nginx or whitenoise first.
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]
