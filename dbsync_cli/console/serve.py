"""Serving the console: uvicorn on the configured address (127.0.0.1 by default), TLS when cert and key are set;
the session-signing key is made once and kept under the receiver's home (mode 0600)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import uvicorn

from dbsync_cli.config import Config
from dbsync_cli.console.app import create_app
from dbsync_cli.console.users import users_path


def secret_key(home: Path) -> str:
    path = home / "console-secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def url_of(cfg: Config, host: str | None = None, port: int | None = None) -> str:
    scheme = "https" if cfg.get("console.tls_cert") else "http"
    return f"{scheme}://{host or cfg['console.host']}:{port or cfg['console.port']}/"


def serve(cfg: Config, host: str | None = None, port: int | None = None) -> None:
    cert, key = cfg.get("console.tls_cert"), cfg.get("console.tls_key")
    app = create_app(cfg, users_path(cfg.home), secret_key(cfg.home), https=bool(cert))
    uvicorn.run(app, host=host or cfg["console.host"], port=port or cfg["console.port"], ssl_certfile=cert,
                ssl_keyfile=key, log_level="warning", access_log=False, server_header=False,
                proxy_headers=False)  # uvicorn believes X-Forwarded-For from 127.0.0.1; the app decides instead
