"""`GET /ui`: the operator console (DESIGN §12), one static page served by the service itself.

The page (index.html, console.js, console.css beside this module, shipped in the
wheel) has no build step and loads nothing from the network: it reads the JSON
API (`GET /v1/metrics`, `GET /v1/batches/{id}`) and the event stream
(`GET /v1/events`, read with fetch() because EventSource cannot send an
Authorization header) with an admin token the operator pastes. The token is kept
in sessionStorage and sent only as a header: never in a URL, so never in an
access log. The files themselves are public (they hold no data), and are sent
with a Content-Security-Policy that allows this origin only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from blogqueue.errors import NotFound

HERE = Path(__file__).parent
# The only files served, with their types: a fixed list, so no path from the URL reaches the disk.
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


async def page(request: Request) -> Response:
    return Response((HERE / "index.html").read_bytes(), media_type="text/html; charset=utf-8", headers=HEADERS)


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        raise NotFound("no such console file", details={"name": name[:100]})
    return Response((HERE / name).read_bytes(), media_type=ASSETS[name], headers=HEADERS)


ROUTES = [
    Route("/ui", page, methods=["GET"]),
    Route("/ui/{name}", asset, methods=["GET"]),
]


def openapi_paths(op: Any, err: Any) -> dict[str, Any]:
    """The document's entries, built with service/openapi.py's helpers (`_op`, `_err`)."""
    html = {"description": "the console page", "content": {"text/html": {"schema": {"type": "string"}}}}
    return {
        "/ui": {"get": op("The operator console (an HTML page; it asks for an admin token)", {"200": html},
                          auth=False)},
        "/ui/{name}": {"get": op("The console's script and style sheet", {
            "200": {"description": "the file", "content": {"text/javascript": {"schema": {"type": "string"}},
                                                           "text/css": {"schema": {"type": "string"}}}},
            "404": err("no such file"),
        }, params=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}], auth=False)},
    }
