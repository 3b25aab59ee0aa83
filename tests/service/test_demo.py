"""scripts/demo's core, non-interactively: two sites through Artemis (TLS) into central, every row arrives."""

import contextlib
import http.cookiejar
import os
import re
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_syncs_every_site_row(services) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--patients", "8", "--timeout", "180"],
                         capture_output=True, timeout=400, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert "every site row arrived at central" in out
    assert "site1" in out and "site2" in out
    # it ends with the console's address and a login that works
    last = out.strip().splitlines()[-1]
    found = re.search(r"console: (http://\S+) \(log in as demo, password (\S+);", last)
    assert found, last
    url, password = found.groups()
    jar = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        page = jar.open(url + "login", timeout=30).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        form = urllib.parse.urlencode({"user": "demo", "password": password, "csrf": csrf}).encode()
        sites = jar.open(url + "login", data=form, timeout=30).read().decode()
        assert 'data-site="site1"' in sites and 'data-site="site2"' in sites
    finally:  # the console the demo left running (not `--down`: that stops the services the other tests use)
        pid_file = ROOT / ".demo" / "pids" / "console.log.pid"
        with contextlib.suppress(ProcessLookupError, ValueError, OSError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            pid_file.unlink()
