"""The console's users file: names, roles, argon2 password hashes (never a password) and each user's session
epoch, like EIP's users file but hashed. Kept under the receiver's home with mode 0600.

A session cookie carries the epoch its user had at login and the console compares it with the file on every
request: logging out, a new password or removing the user moves or drops the epoch, so every cookie issued
before stops working at once (a signed cookie alone stays valid until it expires)."""

from __future__ import annotations

import fcntl
import hmac
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from dbsync_cli.i18n import _

ROLES = ("readonly", "operator")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}\Z")
_HASHER = PasswordHasher()
#: a hash checked when the user does not exist, so a wrong name costs as long as a wrong password
_DUMMY = _HASHER.hash("not a password of anyone")


class UsersError(Exception):
    """A user name, role or password the users file cannot take (one line)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    #: changes at logout, password change and removal: a session made with another epoch is over
    epoch: str = ""

    @property
    def may_act(self) -> bool:
        return self.role == "operator"


def users_path(home: Path) -> Path:
    return home / "console-users.json"


def _load(path: Path) -> dict[str, dict[str, str]]:
    if not path.exists():
        return {}
    data = orjson.loads(path.read_bytes())
    return data if isinstance(data, dict) else {}


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time (the CLI adding a user while the console logs someone out)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _new_epoch() -> str:
    return secrets.token_urlsafe(12)


def add_user(path: Path, name: str, password: str, role: str = "readonly") -> None:
    """Add or replace a user (its password hashed with argon2id); a new password ends the user's sessions."""
    if not USER_NAME.match(name):
        raise UsersError(_("user name {name!r}: letters, digits, '_', '.', '@' or '-', up to 64").format(name=name[:64]))
    if role not in ROLES:
        raise UsersError(_("role {role!r}: expected {roles}").format(role=role, roles=" or ".join(ROLES)))
    if len(password) < 8:
        raise UsersError(_("the password must have at least 8 characters"))
    hashed = _HASHER.hash(password)
    with _locked(path):
        users = _load(path)
        users[name] = {"role": role, "hash": hashed, "epoch": _new_epoch()}
        _save(path, users)


def _save(path: Path, users: dict[str, dict[str, str]]) -> None:
    """Written whole to a new file (mode 0600 from the start), then renamed over the old one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(orjson.dumps(users, option=orjson.OPT_INDENT_2))
    tmp.replace(path)


def remove_user(path: Path, name: str) -> bool:
    """Remove a user: its sessions end with it."""
    with _locked(path):
        users = _load(path)
        if users.pop(name, None) is None:
            return False
        _save(path, users)
    return True


def end_sessions(path: Path, name: str) -> None:
    """A new epoch for `name`: every session of that user (in every browser) is over."""
    with _locked(path):
        users = _load(path)
        if name in users:
            users[name]["epoch"] = _new_epoch()
            _save(path, users)


def current_user(path: Path, name: str, epoch: str) -> User | None:
    """The user a session names, when it still exists and the session's epoch is its current one (read from the
    file each time, so another process's `user remove` counts at once)."""
    entry = _load(path).get(name)
    if entry is None or not epoch or not hmac.compare_digest(str(entry.get("epoch", "")), epoch):
        return None
    return User(name, str(entry.get("role", "readonly")), epoch)


def list_users(path: Path) -> list[User]:
    return [User(n, str(u.get("role", "readonly"))) for n, u in sorted(_load(path).items())]


def authenticate(path: Path, name: str, password: str) -> User | None:
    """The user when the password matches its hash; None otherwise (in about the same time either way)."""
    entry = _load(path).get(name)
    try:
        _HASHER.verify(entry["hash"] if entry else _DUMMY, password)
    except (VerificationError, InvalidHashError):
        return None
    if entry is None:
        return None
    if not entry.get("epoch"):  # a file from before epochs: give the user one, so its sessions can be ended
        end_sessions(path, name)
        entry = _load(path).get(name) or entry
    return User(name, str(entry.get("role", "readonly")), str(entry.get("epoch", "")))
