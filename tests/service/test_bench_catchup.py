"""scripts/bench-catchup end to end at a small size over a link that drops: a purged site catches up by verify,
the checks are judged by SQL and printed as verdict lines, and a clean run exits 0 and leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.services import Services

ROOT = Path(__file__).resolve().parents[2]
# lane 1: a minute of senders and receivers; with it there the two lanes end within seconds of each other


def test_the_catch_up_bench_runs_small_and_judges_every_check(services: Services, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench-catchup"), "--rows", "3000",
                           "--kbit", "0", "--latency", "0.05", "--drop-every", "8", "--drop-for", "1",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    verdicts = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("verdict ")]
    assert len(verdicts) == 6 and all(": ok: " in line for line in verdicts), verdicts
    result = json.loads(out.read_text())
    assert result["catch_up"]["extra_rows"] == 0 and result["catch_up"]["deleted_still_at_central"] == 0
    assert 0 < result["catch_up"]["messages"] <= 0.05 * result["site_rows"]
    assert result["repair"]["exit_code"] in (0, 1) and result["final"]["differences"] == 0
    assert "kept for inspection" not in proc.stdout + proc.stderr
