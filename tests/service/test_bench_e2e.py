"""scripts/bench's end-to-end phase at a tiny size, with two receiver workers: every committed row judged at
central, the latency probe's rows too, and the machine's CPU over the window reported beside the rows/s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from devtools.services import Services

ROOT = Path(__file__).resolve().parents[2]


def test_the_pipeline_phase_with_two_workers_judges_every_row_and_reports_the_machine(
        services: Services, tmp_path: Path) -> None:
    out, markdown = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--rows", "600", "--skip", "stages",
                           "--skip", "preload", "--skip", "fairness", "--skip", "archive", "--latency-seconds", "3",
                           "--rate", "20", "--e2e-workers", "2", "--out", str(out), "--markdown", str(markdown)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    verdicts = [line for line in proc.stderr.splitlines() if line.startswith("verdict ")]
    assert len(verdicts) == 4 and all(": ok: " in line for line in verdicts), proc.stderr[-3000:]
    e2e = json.loads(out.read_text())["e2e"]
    assert e2e["rows"] == e2e["rows_committed"] > 0 and e2e["receiver_workers"] == 2
    assert {"worker1", "worker2", "sender-site1", "sender-site2"} == set(e2e["processes"])
    machine = e2e["machine"]
    assert machine["busy_cpu_seconds"] > machine["writer_cpu_seconds"] > 0, machine
    assert machine["cpu_us_per_row"] > 0 and machine["rows_per_second_all_cores"] > 0, machine
    assert 0 < machine["cores_busy"] <= machine["cores"] + 0.1, machine  # /proc/stat ticks round
    assert json.loads(out.read_text())["latency"]["missing"] == 0
    text = markdown.read_text()
    assert "2 receiver workers" in text and "µs of CPU a row" in text, text
    assert "kept for inspection" not in proc.stderr
