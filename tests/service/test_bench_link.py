"""scripts/bench-link end to end at a tiny size: a backlog drained through the link emulator, with and without drops,
every committed row judged at central, the figures printed and written, nothing left behind. No figure is judged
here (`--goal 0`): the goal belongs to the bench, this only keeps the bench from rotting."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.services import Services

ROOT = Path(__file__).resolve().parents[2]


def test_link_bench_drains_a_small_backlog_and_judges_every_row(services: Services, tmp_path: Path) -> None:
    out = tmp_path / "bench-link.json"
    # a slow link that drops often, so that the drops variant does see outages within a small backlog
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench-link"), "--changes", "600", "--kbit", "64",
                           "--latency", "0.1", "--drop-every", "4", "--drop-for", "1", "--goal", "0",
                           "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("verdict ")]
    rows = [line for line in lines if "committed rows arrived" in line]
    assert len(rows) == 2 and all(": ok: " in line and " 0 missing, 0 different" in line for line in rows), lines
    assert len([line for line in lines if line.startswith("verdict link use (")]) == 2, lines
    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"stable", "drops"}
    for result in results.values():
        assert result["missing"] == 0 and result["different"] == 0
        assert result["messages_applied"] > 0 and result["drain_bytes_up"] > 0
        assert 0 < result["link_use_percent"]
    assert results["stable"]["outages"] == 0 and results["stable"]["link_down_seconds"] == 0
    assert results["drops"]["outages"] > 0 and results["drops"]["link_down_seconds"] > 0
    assert "kept for inspection" not in proc.stderr
