"""Say which release answered: every response carries `X-Coffeehouse-Release` (docs/deploys.md).

During a deploy two generations of a server run at once; this header (and the pid the pages and
/health/ show) tells which one answered a request.

Sync and async: a sync-only middleware makes Django run every request of an ASGI server (daphne,
uvicorn, hypercorn) through its one sync thread, and daphne then no longer stopped on TERM under load
(killed at stopwaitsecs; tests/servers/test_django.py, the restart without held sockets).
"""

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

HEADER = "X-Coffeehouse-Release"


@sync_and_async_middleware
def release_header(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], object]:
    if iscoroutinefunction(get_response):
        async_get_response: Callable[[HttpRequest], Awaitable[HttpResponse]] = get_response  # type: ignore[assignment]

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            response = await async_get_response(request)
            response[HEADER] = settings.RELEASE
            return response

        return markcoroutinefunction(async_middleware)

    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        response[HEADER] = settings.RELEASE
        return response

    return middleware
