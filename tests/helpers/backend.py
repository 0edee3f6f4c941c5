"""An application backend for the proxy's tests: a real HTTP server in its own process.

    with Backend() as backend:
        config.proxy.connect_url = backend.url("connect")
        ...
        backend.calls("refresh")   # what the proxy POSTed, with the headers it sent

Run as a script it serves on a free loopback port and prints the port. It answers as
docs/operations.md ("Backend proxy") says a backend does:

* connect: the user from the ``session`` cookie (``s-alice`` is alice, ``s-bob`` bob)
  or from ``Authorization: Bearer t-NAME``; nothing of the two: error 1000. Connect data
  ``{"ban": true}``: disconnect 4501; ``{"expire": "now"}``: an expiry that has passed.
* refresh: the first for a client lives one more second (``ttl``), the second says
  ``expired``.
* subscribe: ``chat:secret`` refused with 1001; ``chat:kick`` disconnects with 4000.
* publish: text ``spam`` refused with 1002; any other is published as
  ``{"text", "by": user}``.
* rpc: ``whoami`` answers what the backend saw (user, client, transport, headers);
  ``add`` adds; ``slow`` does not answer for 30 s; ``crash`` is a 500; ``garbage`` is not
  JSON; ``huge`` is 2 MiB; other methods: error 104.
* ``GET /calls``: every call so far, ``{"kind", "body", "headers"}``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

START_TIMEOUT = 10.0
SESSIONS = {"s-alice": "alice", "s-bob": "bob"}


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.refreshes: dict[str, int] = {}


STATE = _State()


def _cookie(headers: dict[str, str], name: str) -> str | None:
    for pair in headers.get("cookie", "").split(";"):
        key, _, value = pair.strip().partition("=")
        if key == name:
            return value
    return None


def _connect(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    data = body.get("data") or {}
    if data.get("ban"):
        return {"disconnect": {"code": 4501, "reason": "banned"}}
    user = SESSIONS.get(_cookie(headers, "session") or "")
    authorization = headers.get("authorization", "")
    if user is None and authorization.startswith("Bearer t-"):
        user = authorization.removeprefix("Bearer t-")
    if user is None:
        return {"error": {"code": 1000, "message": "not logged in"}}
    result: dict[str, Any] = {"user": user, "info": {"name": user.title()}}
    if data.get("expire") == "now":
        result["expire_at"] = int(time.time()) - 1
    return {"result": result}


def _refresh(body: dict[str, Any]) -> dict[str, Any]:
    with STATE.lock:
        count = STATE.refreshes[body["client"]] = STATE.refreshes.get(body["client"], 0) + 1
    if count == 1:
        return {"result": {"ttl": 1}}
    return {"result": {"expired": True}}


def _subscribe(body: dict[str, Any]) -> dict[str, Any]:
    if body["channel"] == "chat:secret":
        return {"error": {"code": 1001, "message": "members only"}}
    if body["channel"] == "chat:kick":
        return {"disconnect": {"code": 4000, "reason": "go away"}}
    return {"result": {}}


def _publish(body: dict[str, Any]) -> dict[str, Any]:
    text = body["data"].get("text")
    if text == "spam":
        return {"error": {"code": 1002, "message": "no spam"}}
    return {"result": {"data": {"text": text, "by": body["user"]}}}


def _rpc(body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any] | None:
    method, data = body["method"], body.get("data")
    if method == "whoami":
        seen = {k: body.get(k) for k in ("user", "client", "transport")}
        return {"result": {"data": {**seen, "headers": headers}}}
    if method == "add":
        return {"result": {"data": data["a"] + data["b"]}}
    return None if method in ("slow", "crash", "garbage", "huge") else _unknown()


def _unknown() -> dict[str, Any]:
    return {"error": {"code": 104, "message": "no such method"}}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: One write per response (headers and body together): with Nagle's algorithm and
    #: delayed ACKs, a response in two writes costs the client 40 ms.
    wbufsize = 65536

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output stays readable

    def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        with STATE.lock:
            calls = json.dumps(STATE.calls).encode()
        self._send(200, calls)

    def do_POST(self) -> None:
        kind = self.path.strip("/")
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        headers = {name.lower(): value for name, value in self.headers.items()}
        with STATE.lock:
            STATE.calls.append({"kind": kind, "body": body, "headers": headers})
        answer: dict[str, Any] | None
        if kind == "connect":
            answer = _connect(body, headers)
        elif kind == "refresh":
            answer = _refresh(body)
        elif kind == "subscribe":
            answer = _subscribe(body)
        elif kind == "publish":
            answer = _publish(body)
        elif kind == "rpc":
            answer = _rpc(body, headers)
        else:
            self._send(404, b"{}")
            return
        if answer is not None:
            self._send(200, json.dumps(answer).encode())
        elif body["method"] == "slow":
            time.sleep(30)  # longer than any proxy timeout of the tests
            self._send(200, b'{"result": {}}')
        elif body["method"] == "crash":
            self._send(500, b"Internal Server Error", "text/plain")
        elif body["method"] == "garbage":
            self._send(200, b"<html>not json</html>", "text/html")
        else:  # huge
            self._send(200, json.dumps({"result": {"data": "x" * 2**21}}).encode())


class Backend:
    """The backend above, started as a separate process on a free port."""

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def __enter__(self) -> Self:
        # -I: the script's folder is not on sys.path (its http.py would hide the stdlib's).
        args = [sys.executable, "-I", __file__]
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], START_TIMEOUT)
        line = self.process.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            self.__exit__(None, None, None)
            raise RuntimeError("the test backend did not start")
        self.port = int(line)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(START_TIMEOUT)
            assert self.process.stdout is not None
            self.process.stdout.close()

    def url(self, kind: str) -> str:
        return f"http://127.0.0.1:{self.port}/{kind}"

    def calls(self, kind: str | None = None) -> list[dict[str, Any]]:
        """What the backend was asked so far (``kind``: of one kind only)."""
        with urllib.request.urlopen(self.url("calls"), timeout=START_TIMEOUT) as response:
            calls: list[dict[str, Any]] = json.loads(response.read())
        return [call for call in calls if kind is None or call["kind"] == kind]


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
