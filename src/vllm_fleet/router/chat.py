"""The chat page the router serves at ``/`` (issue 15): plain HTML, JavaScript and CSS shipped in the package.

The page talks only to the router it came from (``v1/models``, ``v1/chat/completions`` streamed),
so its Content-Security-Policy allows nothing else: no CDN, no fonts, no images from elsewhere.
The files are read once, on the first request, from the installed package (``static/``).
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from vllm_fleet.wire.http1_server import Reply, Request

# Request path -> (file under static/, content type). Nothing else under / is ours: other paths go to a backend.
PAGES = {
    "/": ("chat.html", "text/html"),
    "/chat.js": ("chat.js", "text/javascript"),
    "/chat.css": ("chat.css", "text/css"),
}

HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:;"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # a new version of the package shows at once
}


@cache
def _read(name: str) -> bytes:
    return files("vllm_fleet.router").joinpath("static", name).read_bytes()


def is_page(request: Request) -> bool:
    """Whether ``request`` asks for the chat page or one of its files."""
    return request.path in PAGES and request.method in ("GET", "HEAD")


def page(request: Request) -> Reply:
    """The file ``request`` asks for (see :func:`is_page`)."""
    name, content_type = PAGES[request.path]
    return Reply(200, [("Content-Type", f"{content_type}; charset=utf-8"), *HEADERS.items()], _read(name))
