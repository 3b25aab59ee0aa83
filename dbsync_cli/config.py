"""Configuration: one TOML file per role, `DBSYNC_*` environment overrides, secrets from files.

Keys read like the OpenMRS EIP properties (sender id, server id, broker url/user/password, home directory) so an
operator who ran EIP recognises them. Every key is declared once, with its type, default, range and help, in the
typed model of `config_model`; `KEYS` is the flat view of it. A problem is one line naming the key, the value
(never a secret's), the rule and where the value came from.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydantic
from pydantic.fields import FieldInfo

from dbsync_cli.config_model import Settings
from dbsync_cli.db import DbParams
from dbsync_cli.i18n import _

ENV_PREFIX = "DBSYNC_"
MASK = "********"


class ConfigError(Exception):
    """A configuration problem: the message is one line that names the key."""


@dataclass(frozen=True)
class Key:
    """One key as the rest of the code reads it (derived from the model, never declared here)."""

    type: type | tuple[type, ...]
    default: Any = None
    required: bool = False
    secret: bool = False
    choices: tuple[Any, ...] | None = None
    roles: tuple[str, ...] = ("sender", "receiver")
    help: str = ""


def _key(field: FieldInfo) -> Key:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    kind: Any = field.annotation
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    choices = None
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        kind = type(choices[0])
    kind = typing.get_origin(kind) or kind  # list[str] → list
    roles = extra.get("roles") or ["sender", "receiver"]
    return Key(kind, field.get_default(call_default_factory=True), bool(extra.get("required")),
               bool(extra.get("secret")), choices, tuple(str(r) for r in roles) if isinstance(roles, list) else (),
               field.description or "")


def _keys() -> dict[str, Key]:
    keys: dict[str, Key] = {}
    for name, field in Settings.model_fields.items():
        section = field.annotation
        if isinstance(section, type) and issubclass(section, pydantic.BaseModel):
            for sub, subfield in section.model_fields.items():
                keys[f"{name}.{sub}"] = _key(subfield)
        else:
            keys[name] = _key(field)
    return keys


#: "section.key" → its declaration in the model
KEYS: dict[str, Key] = _keys()


def _env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace(".", "__")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for name, value in tree.items():
        dotted = f"{prefix}{name}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        section, _dot, name = dotted.rpartition(".")
        (tree.setdefault(section, {}) if section else tree)[name] = value
    return tree


def _coerce_env(key: str, spec: Key, raw: str) -> Any:
    """Environment values are strings: give them the key's type."""
    kind = spec.type
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return lowered in ("1", "true", "yes", "on")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is list:
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(_("{key}: environment variable {name} is not a valid {type}").format(
            key=key, name=_env_name(key), type=_type_name(kind))) from None
    return raw


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "/".join(k.__name__ for k in kind) if isinstance(kind, tuple) else kind.__name__


@dataclass
class Config:
    role: str
    values: dict[str, Any]
    source: str

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def get(self, key: str, default: Any = None) -> Any:
        value = self.values.get(key)
        return default if value is None else value

    @property
    def settings(self) -> Settings:
        """The values as the typed model (`cfg.settings.receiver.batch_messages`), checked again."""
        return Settings.model_validate(_nest(self.values))

    @property
    def home(self) -> Path:
        return Path(self.values["home"]).expanduser()

    @property
    def log_file(self) -> Path:
        return Path(self.values.get("log_file") or self.home / "logs" / "dbsync.log")

    def db(self, section: str) -> DbParams:
        return DbParams(
            host=self[f"{section}.host"],
            port=self[f"{section}.port"],
            user=self[f"{section}.user"],
            password=self[f"{section}.password"],
            database=self[f"{section}.database"],
            ssl_ca=self.get(f"{section}.ssl_ca"),
            ssl_verify_identity=bool(self[f"{section}.ssl_verify_identity"]),
        )

    def secrets(self) -> list[str]:
        """Secret values, so log output can mask them wherever they appear."""
        return [str(v) for k, v in self.values.items() if KEYS[k].secret and v]

    def masked(self) -> dict[str, Any]:
        return {k: (MASK if KEYS[k].secret and v else v) for k, v in sorted(self.values.items())}


def load(path: str | os.PathLike[str] | None, role: str, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment, resolve secret files, validate. Raises ConfigError on the first problem."""
    problems = validate(path, role, env)
    if isinstance(problems, Config):
        return problems
    raise ConfigError(problems[0])


def validate(path: str | os.PathLike[str] | None, role: str, env: Mapping[str, str] | None = None) -> Config | list[str]:
    """Return the config, or every problem found (one line each)."""
    env = os.environ if env is None else env
    problems: list[str] = []
    tree: dict[str, Any] = {}
    source = "environment"
    if path is not None:
        source = str(path)
        try:
            with Path(path).open("rb") as fh:
                tree = tomllib.load(fh)
        except FileNotFoundError:
            return [_("config file {path}: not found").format(path=path)]
        except tomllib.TOMLDecodeError as exc:
            return [_("config file {path}: invalid TOML: {error}").format(path=path, error=exc)]
    flat = _flatten(tree)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # where each value came from, for the problem lines
    for key, value in flat.items():
        if key.endswith("_file") and key[: -len("_file")] in KEYS and KEYS[key[: -len("_file")]].secret:
            continue
        if key not in KEYS:
            problems.append(_("{key}: unknown key in {source}").format(key=key, source=source))
        elif role not in KEYS[key].roles:
            problems.append(_("{key}: not a {role} key (it belongs to the {roles} config)").format(
                key=key, role=role, roles="/".join(KEYS[key].roles)))
        else:
            values[key], origin[key] = value, _("in {path}").format(path=source)
    for key, spec in KEYS.items():
        if role not in spec.roles:
            continue
        env_value = env.get(_env_name(key))
        if env_value is not None:
            try:
                values[key] = _coerce_env(key, spec, env_value)
                origin[key] = _("from {name}").format(name=_env_name(key))
            except ConfigError as exc:
                problems.append(str(exc))
                continue
        if spec.secret and values.get(key) is None:
            secret_file = env.get(_env_name(key) + "_FILE") or flat.get(key + "_file")
            if secret_file:
                try:
                    values[key] = Path(secret_file).expanduser().read_text().strip()
                except OSError as exc:
                    problems.append(_("{key}_file: cannot read {path}: {error}").format(
                        key=key, path=secret_file, error=exc.strerror))
                    continue
        if values.get(key) is None:
            values.pop(key, None)
            if spec.required:
                problems.append(_("{key}: missing (set it in {source} or {name})").format(
                    key=key, source=source, name=_env_name(key)))
    try:
        settings = Settings.model_validate(_nest(values))
    except pydantic.ValidationError as exc:
        problems += _problems(exc, values, origin)
        return problems
    if problems:
        return problems
    typed = _flatten(settings.model_dump())
    values = {key: typed[key] for key, spec in KEYS.items() if role in spec.roles}
    problems = _cross_checks(values)
    if problems:
        return problems
    return Config(role=role, values=values, source=source)


def _rule(kind: str, ctx: Mapping[str, Any], message: str) -> str:
    """pydantic's rule in the words of our problem lines (its own message for a rule of ours)."""
    if kind == "greater_than_equal":
        return _("must be at least {ge}").format(ge=ctx["ge"])
    if kind == "less_than_equal":
        return _("must be at most {le}").format(le=ctx["le"])
    if kind == "string_too_short":
        return _("must not be empty")
    if kind == "string_too_long":
        return _("must be at most {max_length} characters").format(max_length=ctx["max_length"])
    return message.replace("Input should", "must")


def _problems(error: pydantic.ValidationError, values: Mapping[str, Any], origin: Mapping[str, str]) -> list[str]:
    """One line per key: the key, its value (masked when secret), the rule it breaks, where the value came from."""
    lines: list[str] = []
    seen: set[str] = set()
    for item in error.errors():
        loc = [str(part) for part in item["loc"] if isinstance(part, str)]
        key = ".".join(loc)
        if key in seen or key not in KEYS:
            continue
        seen.add(key)
        spec = KEYS[key]
        value = values.get(key)
        where = origin.get(key, "")
        kind = item["type"]
        of_item = any(isinstance(part, int) for part in item["loc"])  # a list's item, not the value itself
        if kind.endswith("_type") and not of_item:
            text = _("{key}: expected {type}, got {got} {value}").format(
                key=key, type=_type_name(spec.type), got=type(value).__name__, value=_shown(spec, value))
        elif kind == "literal_error":
            text = _("{key}: {value} is not one of {choices}").format(
                key=key, value=_shown(spec, value), choices=", ".join(map(str, spec.choices or ())))
        else:
            rule = _rule(kind, item.get("ctx", {}), item["msg"])
            shown = _shown(spec, item["input"] if of_item else value)
            text = _("{key}: {value}: {rule}").format(key=key, value=shown, rule=rule)
        lines.append(f"{text} ({where})" if where else text)
    return lines


def plaintext_host(values: Mapping[str, Any]) -> str | None:
    """The broker host when the URL is plain STOMP (no TLS) to a host other than loopback, else None."""
    url = urlsplit(str(values.get("broker.url") or ""))
    if url.scheme != "stomp" or values.get("broker.tls"):
        return None
    return _remote(url.hostname or "")


def _remote(host: str) -> str | None:
    """`host` unless it is this machine (loopback)."""
    if host == "localhost":
        return None
    try:
        return None if ipaddress.ip_address(host).is_loopback else host
    except ValueError:
        return host


def _cross_checks(values: Mapping[str, Any]) -> list[str]:
    """Rules over several keys: patient data and the broker password never cross a network in clear text unless
    the operator says so; a sender's envelopes fit what a receiver accepts."""
    problems = []
    host = plaintext_host(values)
    if host is not None and not values.get("broker.allow_plaintext"):
        problems.append(_("broker.url: plain stomp:// to {host} would send patient data and the broker password "
                          "unencrypted; use stomp+ssl:// (or set broker.allow_plaintext = true)").format(host=host))
    management = urlsplit(str(values.get("broker.management_url") or ""))
    remote = _remote(management.hostname or "") if management.scheme == "http" else None
    if remote is not None:
        problems.append(_("broker.management_url: plain http:// to {host} would send central's broker password "
                          "unencrypted; use https://").format(host=remote))
    for key in ("sender.complex_obs_dir", "receiver.complex_obs_dir"):
        if values.get(key) and values.get("broker.destination_type") == "topic":
            problems.append(_("{key}: complex obs files travel on a queue that several receivers would share in "
                              "topic mode (each would get a part of each file); use queue mode or unset it").format(
                key=key))
    if "sender.id" in values:  # a sender's envelopes; a receiver's limit is its own
        problems += _site_id_checks(str(values["sender.id"]))
        problems += _envelope_checks(values)
    return problems


#: central keeps a site's identifier in VARCHAR(100) columns
MAX_SITE_ID = 100


def _site_id_checks(site: str) -> list[str]:
    """The site id travels in every message id (``site:epoch:file:pos:row``) and in the dbsync-site broker header:
    a ``:`` would make ids ambiguous, and a control character cannot travel in a STOMP header (a NUL cuts the
    frame at the receiver)."""
    from dbsync_cli import wire

    if not site.strip() or site != site.strip():
        return [_("sender.id: {value!r} must be a non-empty name without surrounding spaces").format(value=site[:60])]
    if wire.CONTROL_CHARACTERS.search(site) or ":" in site:
        return [_("sender.id: {value!r} holds a control character or ':', which the site's message ids and broker "
                  "headers cannot carry").format(value=site[:60])]
    if len(site) > MAX_SITE_ID:
        return [_("sender.id: {length} characters, over the {most} central stores").format(length=len(site),
                                                                                           most=MAX_SITE_ID)]
    return []


def _envelope_checks(values: Mapping[str, Any]) -> list[str]:
    """A wire-v2 envelope must fit the receiver's message limit and the number of messages it accepts."""
    from dbsync_cli import wire

    problems = []
    if not 1 <= values["broker.rows_per_message"] <= wire.MAX_ENVELOPE_MESSAGES:
        problems.append(_("broker.rows_per_message: {value} is not from 1 to {most} (what a receiver accepts in one "
                          "message)").format(value=values["broker.rows_per_message"], most=wire.MAX_ENVELOPE_MESSAGES))
    if values["broker.message_bytes"] + wire.ENVELOPE_ROOM > values["broker.max_message_bytes"]:
        problems.append(_("broker.message_bytes: {value} leaves no room for an envelope under "
                          "broker.max_message_bytes {limit} (keep it at most {most})").format(
            value=values["broker.message_bytes"], limit=values["broker.max_message_bytes"],
            most=values["broker.max_message_bytes"] - wire.ENVELOPE_ROOM))
    return problems


#: a URL's userinfo (``//user:password@``), wherever it stands in a shown value
_USERINFO = re.compile(r"//[^\s'\"]*@")


def _shown(spec: Key, value: Any) -> str:
    """A value as a problem line shows it: a secret masked, and a URL's userinfo (it may hold a password) too."""
    return MASK if spec.secret else without_userinfo(repr(value))


def without_userinfo(text: str) -> str:
    """`text` with every URL's userinfo masked (``stomp+ssl://***@host``): never shown, whatever the key."""
    return _USERINFO.sub(f"//{MASK}@", text)
