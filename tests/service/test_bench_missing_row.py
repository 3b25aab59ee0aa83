"""scripts/bench fails when a committed row does not arrive: `--lose-row` deletes one applied obs row at central
before the apply stage's verdict, and the run must exit 1 naming that row by table and uuid (≈ 20 s, 300 rows)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from devtools.services import Services

ROOT = Path(__file__).resolve().parents[2]


def test_a_missing_row_fails_the_bench_and_is_named(services: Services, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--rows", "300", "--lose-row",
                           "--skip", "preload", "--skip", "e2e", "--skip", "fairness", "--skip", "archive"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    err = proc.stderr
    lost = re.search(r"deleted obs (\S+) at central", err)
    assert lost, err[-3000:]
    assert proc.returncode == 1, err[-3000:]
    assert re.search(r"verdict apply \(file → empty central\): site1's rows: FAILED: .* 1 missing", err), err[-3000:]
    assert re.search(rf"missing:\n\s+obs {lost[1]}\n", err), err[-3000:]  # the row is named by table and uuid
    assert "bench FAILED: committed rows did not arrive at central" in err
    work = re.search(r"scripts/bench --cleanup (\S+)", err)
    assert work, err[-3000:]  # the evidence is kept and listed; clean it up
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--cleanup", work[1]],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
