"""Static files of the browser demo (``f3stream/web``), served by the server's HTTP hook:
``GET /`` -> the demo page, ``GET /demo/NAME`` -> a file of that folder, anything else -> 404.

Only plain file names directly in the folder are served (no subfolders, no ``..``), so a
request can never reach another file of the machine.
"""

from __future__ import annotations

import re
from pathlib import Path

from websockets.datastructures import Headers
from websockets.http11 import Response

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# AudioWorklet.addModule() refuses scripts without a JavaScript MIME type
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png", ".ico": "image/x-icon"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def _response(status: int, reason: str, body: bytes, ctype: str) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-cache"), ("X-Content-Type-Options", "nosniff")])
    return Response(status, reason, headers, body)


def static_response(path: str) -> Response:
    """The response to a plain GET of ``path``: a file of the demo, or 404."""
    if path == "/":
        name = "index.html"
    elif path.startswith("/demo/"):
        name = path[len("/demo/"):] or "index.html"
    else:
        name = ""
    file = WEB_DIR / name
    if not _NAME.match(name) or file.suffix not in CONTENT_TYPES or not file.is_file():
        return _response(404, "Not Found", b"not found\n", "text/plain; charset=utf-8")
    return _response(200, "OK", file.read_bytes(), CONTENT_TYPES[file.suffix])


__all__ = ["WEB_DIR", "static_response"]
