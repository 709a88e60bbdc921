"""ASGI entry point for daphne, uvicorn and hypercorn: Django for HTTP, a plain websocket echo at /ws/echo/.

No Django Channels: a websocket route is a few lines of ASGI. The lifespan protocol (uvicorn, hypercorn)
is answered here because Django's handler only speaks HTTP.
"""

import os
import warnings
from typing import Any, Awaitable, Callable

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "coffeehouse.settings")

Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

# Django's static serve() streams a file through a synchronous iterator, which its ASGI handler warns
# about; harmless for the demo's few static files (nginx or uWSGI serve them in production).
warnings.filterwarnings("ignore", message="StreamingHttpResponse must consume synchronous iterators")

django_application = get_asgi_application()


async def echo(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    """Accept the websocket, then send every message back until the client disconnects."""
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif message["type"] == "websocket.receive":
            if message.get("text") is not None:
                await send({"type": "websocket.send", "text": message["text"]})
            else:
                await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})
        elif message["type"] == "websocket.disconnect":
            return


async def lifespan(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def application(scope: dict[str, Any], receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await django_application(scope, receive, send)
    elif scope["type"] == "websocket" and scope["path"] == "/ws/echo/":
        await echo(scope, receive, send)
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})  # before accept: the handshake gets 403
    elif scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
