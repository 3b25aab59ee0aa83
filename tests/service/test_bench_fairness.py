"""scripts/bench's fairness and archive phases end to end at a tiny size (≈ 30 s): every committed row judged, a
clean run exits 0, prints one verdict line per check and leaves nothing behind; the archive phase reports its pairs,
each run's rows counted in central's tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.services import Services

ROOT = Path(__file__).resolve().parents[2]


def test_fairness_phase_runs_and_judges_every_row(services: Services, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--skip", "stages", "--skip", "preload",
                           "--skip", "e2e", "--fair-rows", "2000", "--archive-rows", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = [line for line in proc.stderr.splitlines() if line.startswith("verdict ")]
    assert len([line for line in verdicts if line.startswith("verdict fairness")]) == 3, proc.stderr[-3000:]
    assert len([line for line in verdicts if line.startswith("verdict apply, archive")]) == 6, proc.stderr[-3000:]
    assert all(": ok: " in line for line in verdicts), verdicts
    fairness = json.loads(out.read_text())["fairness"]
    assert fairness["missing"] == 0
    assert [v["ok"] for v in fairness["verdicts"]] == [True, True, True]
    assert "kept for inspection" not in proc.stderr
    archive = json.loads(out.read_text())["archive"]  # the archive phase at a tiny size: off and on, three times
    assert len(archive["runs"]) == 6 and archive["rows_per_second_on"] > 0 and archive["rows_per_second_off"] > 0
    assert archive["body_bytes_per_row"] > 0 and archive["archive_binlog_bytes_per_row"] > 0
    assert set(archive["prune"]) == {"drop partition", "delete"}, archive["prune"]
