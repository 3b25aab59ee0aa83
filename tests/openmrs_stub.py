"""A stand-in for OpenMRS' two REST endpoints the receiver calls, on a local threaded HTTP server.

Like openmrs-module-webservices.rest 2.x (ClearDbCacheController2_0, SearchIndexController2_0): POST
/ws/rest/v1/cleardbcache and /ws/rest/v1/searchindexupdate answer 204 No Content; wrong credentials get 401.
``fail_with`` makes every request answer that status (500, 401 …) until it is set back to None.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ENDPOINTS = {"/openmrs/ws/rest/v1/cleardbcache", "/openmrs/ws/rest/v1/searchindexupdate"}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def endpoint(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def credentials(self) -> tuple[str, str] | None:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        return user, password


class OpenMrsStub:
    def __init__(self, user: str = "admin", password: str = "Admin123") -> None:  # noqa: S107 - test credentials
        self.user = user
        self.password = password
        self.requests: list[Request] = []
        self.fail_with: int | None = None
        self.lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                request = Request("POST", self.path, dict(self.headers.items()), body)
                with stub.lock:
                    stub.requests.append(request)
                    status = stub.fail_with
                if status is None:
                    if request.credentials != (stub.user, stub.password):
                        status = 401
                    elif self.path not in ENDPOINTS:
                        status = 404
                    else:
                        status = 204
                self.send_response(status)
                if status == 204:
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                payload = json.dumps({"error": {"message": f"stub status {status}", "code": str(status)}}).encode()
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="OpenMRS"')
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="openmrs-stub", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/openmrs"

    def calls(self) -> list[Request]:
        with self.lock:
            return list(self.requests)

    def __enter__(self) -> OpenMrsStub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
