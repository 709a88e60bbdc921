"""Say which release answered: every response carries `X-Coffeehouse-Release` (docs/deploys.md).

During a deploy two generations of a server run at once; this header (and the pid the pages and
/health/ show) tells which one answered a request.
"""

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse


def release_header(get_response: Callable[[HttpRequest], HttpResponse]) -> Callable[[HttpRequest], HttpResponse]:
    def middleware(request: HttpRequest) -> HttpResponse:
        response = get_response(request)
        response["X-Coffeehouse-Release"] = settings.RELEASE
        return response

    return middleware
