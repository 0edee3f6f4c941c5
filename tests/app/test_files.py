"""app/files.py: the files served as they are, answered the same on every server."""

from __future__ import annotations

from backchannel.app.files import Files
from backchannel.protocol.http11 import Request


def test_the_browser_client_and_its_modules_are_served_to_pages_of_any_origin() -> None:
    files = Files.client()
    assert "/js/backchannel.js" in files.files and "/js/lib/wire.js" in files.files
    answer = files.handle(Request("GET", "/js/backchannel.js"), "/js/backchannel.js")
    assert answer is not None and answer.status == 200
    assert answer.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert answer.headers["Access-Control-Allow-Origin"] == "*"
    assert answer.headers["Cache-Control"] == "no-cache"
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert b"export" in answer.body


def test_other_paths_are_not_answered_and_other_methods_get_405() -> None:
    files = Files.client()
    assert files.handle(Request("GET", "/lp"), "/lp") is None
    refused = files.handle(Request("POST", "/js/backchannel.js"), "/js/backchannel.js")
    assert refused is not None and refused.status == 405
    assert refused.headers["Allow"] == "GET, HEAD"
    assert refused.headers["Cache-Control"] == "no-store"


def test_an_html_page_gets_its_headers_and_other_files_do_not() -> None:
    files = Files([("Content-Security-Policy", "default-src 'none'")])
    files.add("/", b"<!doctype html>", "text/html; charset=utf-8")
    files.add("/app.css", b"body {}", "text/css; charset=utf-8")
    page = files.handle(Request("GET", "/"), "/")
    assert page is not None and page.headers["Content-Security-Policy"] == "default-src 'none'"
    assert "Access-Control-Allow-Origin" not in page.headers
    style = files.handle(Request("GET", "/app.css"), "/app.css")
    assert style is not None and "Content-Security-Policy" not in style.headers
