"""The coffeehouse's pages: the menu, one drink, and the health view procguard checks."""

import os
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from menu.models import Drink


def index(request: HttpRequest) -> HttpResponse:
    return render(request, "menu/index.html", {"drinks": Drink.objects.all(), "pid": os.getpid()})


def drink(request: HttpRequest, slug: str) -> HttpResponse:
    return render(request, "menu/drink.html", {"drink": get_object_or_404(Drink, slug=slug), "pid": os.getpid()})


def health(request: HttpRequest) -> HttpResponse:
    """200 "ok pid PID release RELEASE" when the app can answer from its database; 503 with the reason
    otherwise (a loop of curl on it shows which generation answers across a deploy, docs/deploys.md).

    Kept cheap (one indexed query): procguard runs it every few seconds on every server. The file
    settings.HEALTH_DOWN_FILE makes it fail on purpose, to drain a server or to watch procguard react.
    """
    if Path(settings.HEALTH_DOWN_FILE).exists():
        return HttpResponse(f"down: {settings.HEALTH_DOWN_FILE} exists\n", status=503, content_type="text/plain")
    try:
        Drink.objects.exists()
    except DatabaseError as exc:
        return HttpResponse(f"database: {exc}\n", status=503, content_type="text/plain")
    return HttpResponse(f"ok pid {os.getpid()} release {settings.RELEASE}\n", content_type="text/plain")
