"""scripts/demo's core, non-interactively: two sites through Artemis (TLS) into central, every row arrives."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_syncs_every_site_row(services) -> None:
    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--patients", "8", "--timeout", "180"],
                         capture_output=True, timeout=400, env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = run.stdout.decode()
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    assert "every site row arrived at central" in out
    assert "site1" in out and "site2" in out
