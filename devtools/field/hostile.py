"""Hostile frames sent with a real site's broker login: what a broken or compromised sender puts on the wire.

The receiver must park each of them with a one-line reason and go on. Every frame carries ``dbsync-field-kind``
(its kind) and a ``dbsync-id`` starting ``hostile-``, so a consumer can count what arrived. Kinds:

- ``malformed_json_v1`` / ``malformed_json_v2``: bodies that are not JSON, or cut short
- ``wrong_shape_v1`` / ``wrong_shape_v2``: JSON where parts have the wrong type (``mutate``, ``ODD``, ``GARBAGE``)
- ``oversized``: a message over the sender's 4 MB limit
- ``broken_utf8``, ``control_bytes``: invalid UTF-8, raw control bytes and escaped NULs in string values
- ``odd_case_uuid``: a well-formed message whose uuids are in upper or mixed case
- ``other_site``: a message for another site, sent with this site's login
- ``deflate_broken`` / ``deflate_bomb``: a deflate body that does not inflate, or inflates to 64 MB
- ``nul_header``: a NUL byte inside a header value (raw socket: STOMP cannot carry it, Artemis cuts the frame)
"""

from __future__ import annotations

import copy
import datetime as dt
import functools
import random
import threading
import uuid as uuidlib
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from devtools.field.rawstomp import RawStomp

if TYPE_CHECKING:
    from dbsync_cli.broker import BrokerSettings
    from devtools.services import ArtemisService

#: values that do not belong where they are put (lists for strings, references gone wrong, huge numbers, …)
ODD: list[Any] = [
    [], [1, "a"], {}, {"$ref": []}, {"$ref": "person", "uuid": [1]}, {"$ref": ["person"], "uuid": "abc"},
    {"$ref": "person", "uuid": {"x": 1}}, {"$ref": "person", "uuid": None}, {"$ref": "no_such", "uuid": "abc"},
    {"$b64": 5}, {"$b64": "!!"}, {"$b64": []}, None, 1e308, -1, 2**62, "x" * 300, "\x00", True, "NaN", "",
    {"uuid": {"a": 1}}, {"a": [1, {"b": 2}]}, "2024-13-45 99:99:99", "9999-99-99T99:99:99+99:00", 0.5,
    "' OR 1=1 --", "`; DROP TABLE obs; --",
]
#: bodies that are no sync message at all (v1 and v2)
GARBAGE = [b"{not json", b"\xff\xfe\x00", b"[]", b"null", b'{"v":1}', b"1" * 50, b'{"v":1,"id":[1]}',
           b'{"v":2}', b'{"v":2,"id":"e1","site":"site1","messages":"x"}', b'{"v":2,"id":"e2","site":"site1",'
           b'"messages":[]}', b'{"v":2,"id":[1],"site":"site1","messages":[{}]}', b'{"v":2,"id":"e4","messages":[1]}']

KINDS = ("malformed_json_v1", "malformed_json_v2", "wrong_shape_v1", "wrong_shape_v2", "oversized", "broken_utf8",
         "control_bytes", "odd_case_uuid", "other_site", "deflate_broken", "deflate_bomb", "nul_header")
KIND_HEADER = "dbsync-field-kind"


def mutate(message: dict[str, Any], rng: random.Random, number: int) -> dict[str, Any]:
    """A copy with one part made odd. A fresh uuid, so that a parked mutant never holds up a valid message of the
    same entity (entity order would rightly keep it waiting)."""
    m = copy.deepcopy(message)
    m["id"] = f"fuzz-{number}"
    m["uuid"] = str(uuidlib.uuid4())
    value = copy.deepcopy(rng.choice(ODD))
    where = rng.choice(["top", "data", "data", "data", "source", "drop"])
    if where == "top":
        m[rng.choice(["uuid", "op", "site", "table", "sent", "snapshot", "source", "data", "v", "id"])] = value
    elif where == "data" and isinstance(m.get("data"), dict) and m["data"]:
        m["data"][rng.choice(sorted(m["data"]))] = value
    elif where == "source":
        m["source"][rng.choice(["file", "pos", "row", "server_id", "snapshot", "ts_ms"])] = value
    else:
        m.pop(rng.choice(sorted(m)), None)
    return m


@dataclass(frozen=True)
class HostileFrame:
    kind: str
    body: bytes
    headers: dict[str, str | bytes] = field(default_factory=dict)
    raw: bool = False  # goes over a bare socket (stomp.py would not send it as it is)


def sample_message(site: str, rng: random.Random) -> dict[str, Any]:
    """A well-formed person_name create of ``site`` (what the hostile kinds start from when no real message is
    given); its person is a reference that may not exist, which is a placeholder at central, not an error."""
    now = dt.datetime.now(dt.UTC).isoformat()
    return {
        "v": 1, "id": f"{site}:sample:{rng.randrange(10**9)}", "site": site, "table": "person_name", "op": "c",
        "uuid": str(uuidlib.UUID(int=rng.getrandbits(128), version=4)), "snapshot": False, "sent": now,
        "source": {"server_id": 11, "file": "mysql-bin.000001", "pos": 4, "row": 0, "ts_ms": 0, "snapshot": False},
        "data": {"person_id": {"$ref": "person", "uuid": str(uuidlib.UUID(int=rng.getrandbits(128), version=4))},
                 "given_name": "Hostile", "family_name": "Frame", "preferred": 1, "voided": 0,
                 "date_created": now, "creator": None},
    }


def _envelope(site: str, number: int, members: list[Any]) -> dict[str, Any]:
    return {"v": 2, "id": f"hostile-env-{number}", "site": site, "snapshot": False, "messages": members}


def _odd_case(value: Any, rng: random.Random) -> Any:
    """Every uuid in a message turned to upper or mixed case."""
    if isinstance(value, dict):
        return {k: (_case(v, rng) if k == "uuid" and isinstance(v, str) else _odd_case(v, rng))
                for k, v in value.items()}
    return [_odd_case(v, rng) for v in value] if isinstance(value, list) else value


def _case(text: str, rng: random.Random) -> str:
    return text.upper() if rng.random() < 0.5 else "".join(c.upper() if i % 2 else c for i, c in enumerate(text))


def hostile_frames(site: str, count: int, *, seed: int, valid: Sequence[Mapping[str, Any]] = (),
                   other_site: str = "site2", oversized_bytes: int = 4_100_000) -> list[HostileFrame]:
    """``count`` hostile frames of every kind in turn (then shuffled, seeded), built from ``valid`` messages
    of ``site`` when given (real ones from the sender stages), else from ``sample_message``."""
    rng = random.Random(seed)
    frames: list[HostileFrame] = []
    for number in range(count):
        kind = KINDS[number % len(KINDS)]
        base = copy.deepcopy(dict(rng.choice(valid))) if valid else sample_message(site, rng)
        base["id"] = f"hostile-{kind}-{number}"
        base["uuid"] = str(uuidlib.UUID(int=rng.getrandbits(128), version=4))  # never holds up a real entity
        frames.append(_frame(kind, number, base, site, other_site, rng, oversized_bytes))
    rng.shuffle(frames)
    return frames


def _frame(kind: str, number: int, base: dict[str, Any], site: str, other_site: str, rng: random.Random,
           oversized_bytes: int) -> HostileFrame:
    message_id = base["id"]
    headers: dict[str, str | bytes] = {"dbsync-id": message_id, "dbsync-site": site, "dbsync-table": str(base["table"]),
                                       KIND_HEADER: kind}
    body: bytes
    if kind == "malformed_json_v1":
        whole = orjson.dumps(base)
        body = rng.choice([g for g in GARBAGE if b'"v":2' not in g] + [whole[: rng.randrange(1, len(whole))]])
    elif kind == "malformed_json_v2":
        whole = orjson.dumps(_envelope(site, number, [base]))
        body = whole[: rng.randrange(1, len(whole))]
        headers["dbsync-rows"] = "1"
    elif kind == "wrong_shape_v1":
        body = orjson.dumps(dict(mutate(base, rng, number), id=message_id))
    elif kind == "wrong_shape_v2":
        if rng.random() < 0.5:
            body = rng.choice([g for g in GARBAGE if b'"v":2' in g])
        else:
            body = orjson.dumps(_envelope(site, number, [mutate(base, rng, number), rng.choice(ODD)]))
        headers["dbsync-rows"] = "2"
    elif kind == "oversized":
        base["data"]["given_name"] = "x" * oversized_bytes
        body = orjson.dumps(base)
    elif kind == "broken_utf8":
        body = orjson.dumps(dict(base, data={**base["data"], "given_name": "@@"})).replace(b"@@", b"\xc3\x28\xff")
    elif kind == "control_bytes":
        raw = orjson.dumps(dict(base, data={**base["data"], "given_name": "@@", "family_name": "a\x00b\x1bc"}))
        body = raw.replace(b"@@", bytes(range(1, 32)))  # raw control bytes in a JSON string: not JSON any more
    elif kind == "odd_case_uuid":
        body = orjson.dumps(_odd_case(base, rng))
    elif kind == "other_site":
        body = orjson.dumps(dict(base, site=other_site, id=message_id))
        headers["dbsync-site"] = other_site if rng.random() < 0.5 else site
    elif kind == "deflate_broken":
        body = b"\x00 not deflate " + orjson.dumps(base)[:40]
        headers["dbsync-encoding"] = "deflate"
    elif kind == "deflate_bomb":
        body = _bomb()
        headers["dbsync-encoding"] = "deflate"
    elif kind == "nul_header":
        body = orjson.dumps(base)
        headers["dbsync-table"] = b"person\x00name"
        return HostileFrame(kind, body, headers, raw=True)
    else:
        raise ValueError(f"unknown hostile kind {kind!r}")
    return HostileFrame(kind, body, headers)


@functools.cache
def _bomb() -> bytes:
    """64 MB of JSON in about 64 KB of deflate."""
    return zlib.compress(b'{"v":1,"id":"' + b"0" * (64 << 20) + b'"}', 9)


def send_frames(settings: BrokerSettings, destination: str, frames: Sequence[HostileFrame], *,
                anycast: bool = True) -> Counter[str]:
    """Send ``frames`` persistently to ``destination`` as ``settings.user``; the count of each kind the broker
    confirmed (a receipt on the last frame of each connection; the raw ones one by one)."""
    from dbsync_cli.broker import open_connection

    common = {"persistent": "true", "destination-type": "ANYCAST" if anycast else "MULTICAST"}
    sent: Counter[str] = Counter()
    plain = [f for f in frames if not f.raw]
    if plain:
        receipt = threading.Event()

        class Listener:
            def on_receipt(self, frame: Any) -> None:
                receipt.set()

        conn = open_connection(settings, listener=Listener())
        try:
            for index, frame in enumerate(plain):
                headers = {**common, **{k: v if isinstance(v, str) else v.decode() for k, v in frame.headers.items()}}
                if index == len(plain) - 1:
                    headers["receipt"] = "hostile-last"
                conn.send(destination, frame.body, headers=headers)
            if not receipt.wait(60):
                raise TimeoutError(f"no receipt from the broker for {len(plain)} hostile frames")
        finally:
            conn.disconnect()
        sent.update(f.kind for f in plain)
    raw = [f for f in frames if f.raw]
    if raw:
        with RawStomp(settings) as stomp:
            for index, frame in enumerate(raw):
                reply = stomp.send(destination, frame.body, {**common, **frame.headers}, receipt=f"raw-{index}")
                if reply is None or reply.command != "RECEIPT":
                    detail = reply.header("message") if reply is not None else "connection closed"
                    raise ConnectionError(f"the broker refused a {frame.kind} frame: {detail}")
                sent[frame.kind] += 1
    return sent


def send_hostile(artemis: ArtemisService, site: str, destination: str, count: int, *, seed: int,
                 valid: Sequence[Mapping[str, Any]] = (), tls: bool = False, **options: Any) -> dict[str, int]:
    """Log in as ``site``'s own broker user and send ``count`` hostile frames (every kind in turn) to
    ``destination``; the number of each kind the broker confirmed. ``options`` go to ``hostile_frames``."""
    frames = hostile_frames(site, count, seed=seed, valid=valid, **options)
    return dict(send_frames(artemis.site_settings(site, tls=tls), destination, frames))
