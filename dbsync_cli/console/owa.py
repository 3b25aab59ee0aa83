"""The OpenMRS Open Web App that opens the console from inside OpenMRS (Manage Apps → upload the zip), like
EIP's: manifest.webapp, index.html and js/config.js with `dbSyncUrl`."""

from __future__ import annotations

import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from dbsync_cli import __version__
from dbsync_cli.i18n import _

INDEX = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>dbsync</title>
<script src="js/config.js"></script>
<style>html, body, iframe { margin: 0; width: 100%; height: 100%; border: 0; }</style></head>
<body>
<iframe id="dbsync" title="dbsync console"></iframe>
<noscript><p>The dbsync console needs JavaScript to open inside OpenMRS.</p></noscript>
<script>document.getElementById("dbsync").src = dbSyncUrl;</script>
</body>
</html>
"""


class OwaError(Exception):
    """The console URL an OWA would open is not usable (one line)."""


def manifest(url: str) -> dict[str, object]:
    return {
        "version": __version__,
        "name": "dbsync",
        "description": "dbsync console: sites, queues, conflicts and verify results of the central receiver",
        "launch_path": "index.html",
        "developer": {"name": "dbsync", "url": "https://github.com/dbsync"},
        "default_locale": "en",
        "activities": {"openmrs": {"href": "*"}},
        "dbsync": {"console_url": url},
    }


def build(url: str, out: Path) -> Path:
    """Write the OWA zip for a console reachable at `url` (http or https, as OpenMRS users' browsers see it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OwaError(_("console url {url!r}: expected http(s)://host[:port]/").format(url=url))
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.webapp", orjson.dumps(manifest(url), option=orjson.OPT_INDENT_2))
        zf.writestr("index.html", INDEX)
        zf.writestr("js/config.js", f"var dbSyncUrl = {orjson.dumps(url).decode()};\n")
    return out
