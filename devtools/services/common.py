"""Shared plumbing for the throwaway dev/test services: where state lives, secrets, processes, ports.

Everything a service run leaves behind sits under one directory (``DBSYNC_SERVICES_HOME``, default
``<repo>/.services``) so that ``down`` plus ``rm -rf`` is a complete clean-up, and no password ever
travels on a command line: secrets are files of mode 0600 under ``<home>/secrets``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"


class ServiceError(RuntimeError):
    """A service could not be installed, started or stopped; the message says which and why."""


def repo_root() -> Path:
    """The source tree this package was imported from (works for PYTHONPATH and editable installs)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def services_home() -> Path:
    """One directory for all service state; tests may point it elsewhere to get an isolated set."""
    env = os.environ.get("DBSYNC_SERVICES_HOME")
    return Path(env).resolve() if env else repo_root() / ".services"


def port_offset() -> int:
    """Added to every default port, so a second isolated set of services can run beside the first."""
    return int(os.environ.get("DBSYNC_SERVICES_PORT_OFFSET", "0"))


def cache_dir() -> Path:
    """Downloads live outside the tree (and outside the state dir) so ``down``/``rm`` keeps them."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dbsync"


def secret(home: Path, name: str, *, nbytes: int = 18) -> str:
    """Return the secret ``name``, generating it once (hex: safe in SQL, URLs, properties files)."""
    path = home / "secrets" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        tmp = path.with_name(f".{name}.{os.getpid()}.{threading.get_ident()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(nbytes) + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)  # atomic: the first writer wins, concurrent callers read its value
        tmp.unlink()
    return path.read_text().strip()


def secret_file(home: Path, name: str) -> Path:
    """Path of a secret file (created on demand) for tools that read a password from a file."""
    secret(home, name)
    return home / "secrets" / name


@contextlib.contextmanager
def locked(home: Path, name: str) -> Iterator[None]:
    """Serialise start/stop of one service across processes (two test runs starting the same broker)."""
    path = home / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_private(path: Path, text: str) -> None:
    """Write a file readable by the owner only (configs that embed a password)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def run(cmd: list[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 300) -> str:
    """Run a setup command; on failure raise ServiceError with the tail of its output."""
    try:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise ServiceError(f"{what}: {cmd[0]} not found (is it installed?)") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise ServiceError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def spawn(cmd: list[str], *, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None) -> int:
    """Start a long-running server detached (own session, output to ``log``) and return its PID."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    return proc.pid


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, its command line contains ``marker``.

    The marker (a path in the state dir) guards against a recycled PID belonging to something else.
    """
    if not pid:
        return False
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    return marker is None or marker in cmdline


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def stop_pid(pid: int | None, *, marker: str | None, what: str, timeout: float = 30) -> bool:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL. Returns True when something was stopped."""
    if not pid_alive(pid, marker):
        return False
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid, marker):
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(pid, marker):
        if time.monotonic() > deadline:
            raise ServiceError(f"{what}: pid {pid} survived SIGKILL")
        time.sleep(0.1)
    return True


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(check, *, timeout: float, what: str, alive=None, log: Path | None = None) -> None:
    """Poll ``check()`` until true; fail early when ``alive()`` turns false, quoting the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if alive is not None and not alive():
            raise ServiceError(f"{what} exited during start-up{_log_tail(log)}")
        time.sleep(0.1)
    raise ServiceError(f"{what} not ready after {timeout:.0f}s{_log_tail(log)}")


def _log_tail(log: Path | None, lines: int = 12) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"; last lines of {log}:\n" + "\n".join(tail)
