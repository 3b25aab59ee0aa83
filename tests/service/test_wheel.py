"""The installed wheel works without the repository, and holds no dev tooling.

Marked `service` because it needs PyPI for the wheel's dependencies (a fresh venv), not because of MariaDB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.service

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_holds_only_the_product_and_runs_from_a_fresh_venv(tmp_path: Path) -> None:
    source = tmp_path / "source"  # what a release is built from; the build leaves nothing in the repository
    shutil.copytree(ROOT / "dbsync_cli", source / "dbsync_cli", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(dist)],
                           capture_output=True, text=True, cwd=tmp_path)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = dist.glob("dbsync_cli-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("dbsync_cli/", "dbsync_cli-")) for n in names), names
    for tooling in ("devtools", "devservices", "workload", "bench", "manpages", "tests/", "fixtures"):
        assert not [n for n in names if tooling in n], tooling
    assert "dbsync_cli/wire.py" in names and "dbsync_cli/receiver/apply.py" in names
    # the console's templates and translations travel with it
    assert "dbsync_cli/console/templates/base.html" in names
    assert "dbsync_cli/locale/pt/LC_MESSAGES/messages.po" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], capture_output=True, text=True,
                             cwd=tmp_path, env=env)
    assert install.returncode == 0, install.stderr[-2000:]
    dbsync = env_dir / "bin" / "dbsync"
    for args in (["--help"], ["schema", "--help"], ["--version"]):
        run = subprocess.run([str(dbsync), *args], capture_output=True, text=True, cwd=tmp_path, env=env)
        assert run.returncode == 0, (args, run.stderr[-2000:])
        assert "Traceback" not in run.stderr
    where = subprocess.run([str(python), "-c", "import dbsync_cli, sys; print(dbsync_cli.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, env=env)
    assert str(env_dir) in where.stdout, where.stdout  # the installed copy, not the repository
    missing = subprocess.run([str(python), "-c", "import devtools"], capture_output=True, text=True, cwd=tmp_path,
                             env=env)
    assert missing.returncode != 0
