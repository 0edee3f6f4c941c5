"""Files served as they are (the browser client, the demo page): a handler of a request
value, so that every server answers them alike: ``backchannel serve`` (app/server.py)
and the ASGI application (``backchannel.asgi``).

Each file is read once, when the handler is made, from the package's ``static``
folder. Answers carry ``Cache-Control: no-cache`` (a browser checks for a newer copy)
and ``nosniff``; the browser client's files may be loaded by pages of any origin (CORS),
and an HTML page gets the headers given for it (its Content-Security-Policy).
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable

from ..protocol.http11 import Headers, Request, Response

__all__ = ["CLIENT_FILES", "Files", "client_modules", "resource"]

#: The browser client: path -> (package resource, content type).
CLIENT_FILES = {
    "/js/backchannel.js": ("backchannel.js", "text/javascript; charset=utf-8"),
    "/js/backchannel.d.ts": ("backchannel.d.ts", "text/plain; charset=utf-8"),
}


def client_modules() -> dict[str, tuple[str, str]]:
    """The browser client's modules (``static/lib``, imported by ``backchannel.js``):
    every ``.js`` file of the folder, served under ``/js/lib/``."""
    folder = importlib.resources.files("backchannel").joinpath("static", "lib")
    if not folder.is_dir():
        return {}
    return {
        f"/js/lib/{entry.name}": (f"lib/{entry.name}", "text/javascript; charset=utf-8")
        for entry in folder.iterdir()
        if entry.name.endswith(".js")
    }


def resource(name: str) -> bytes:
    """A file of ``backchannel/static`` (the browser client is a link to ``js/`` in a
    checkout, and a copy in a built package)."""
    static = importlib.resources.files("backchannel").joinpath("static")
    return static.joinpath(*name.split("/")).read_bytes()


class Files:
    """Answers GET and HEAD for a set of files, by path."""

    def __init__(self, page_headers: Iterable[tuple[str, str]] = ()) -> None:
        #: Path -> (content, content type).
        self.files: dict[str, tuple[bytes, str]] = {}
        #: Headers of HTML pages: what they may load and run (CSP), no framing.
        self.page_headers = list(page_headers)

    @classmethod
    def client(cls) -> Files:
        """The browser client: ``/js/backchannel.js``, its types and its modules."""
        files = cls()
        for path, (name, kind) in (CLIENT_FILES | client_modules()).items():
            files.add(path, resource(name), kind)
        return files

    def add(self, path: str, content: bytes, kind: str) -> None:
        self.files[path] = (content, kind)

    def handle(self, request: Request, path: str) -> Response | None:
        """The answer for ``path`` (the request's path without its query); None when
        it is not one of these files."""
        file = self.files.get(path)
        if file is None:
            return None
        if request.method not in ("GET", "HEAD"):
            refused = Response.text(405, "Method Not Allowed\n")
            refused.headers.set("Allow", "GET, HEAD")
            refused.headers.set("Cache-Control", "no-store")
            refused.headers.set("X-Content-Type-Options", "nosniff")
            return refused
        body, kind = file
        headers = Headers([("Content-Type", kind), ("Cache-Control", "no-cache")])
        headers.add("X-Content-Type-Options", "nosniff")
        if path.startswith("/js/"):
            # The browser client is public code: a page of another origin (the
            # application's own site) loads it as a module, which needs CORS.
            headers.add("Access-Control-Allow-Origin", "*")
        if kind.startswith("text/html"):
            for name, value in self.page_headers:
                headers.add(name, value)
        return Response(200, headers, body)
