"""The sync message, the one definition of what crosses the broker between a site and central.

A message is ``{"v", "id", "site", "table", "op", "uuid", "snapshot", "sent", "source", "data"}`` (see
docs/architecture.md); on the broker, wire version 2 carries several consecutive messages of one site in one
envelope ``{"v": 2, "id", "site", "snapshot", "messages": [...]}``, deflated as a batch. Foreign keys travel as ``{"$ref": table, "uuid": …}``, binary values as ``{"$b64": …}``,
DATETIME with the site's UTC offset. On the broker the body is the message's JSON, deflated over a size, with
headers that let the receiver store a delivery without parsing its body. Sender and receiver both import this
module and nothing else of each other.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import re
import zlib
from collections.abc import Collection, Mapping, Sequence
from decimal import Decimal
from typing import Any

import orjson

from dbsync_cli.reason_codes import reason

VERSION = 1  # one sync message (one row); the only form of NDJSON between stages
ENVELOPE_VERSION = 2  # several messages of one site in one broker message
MAX_ENVELOPE_MESSAGES = 10_000
#: bytes an envelope adds to its messages' JSON at most (its head, an id of up to MAX_ID, and the commas)
ENVELOPE_ROOM = 1024 + MAX_ENVELOPE_MESSAGES

#: change ops a message carries: create, update, delete, read by the initial load (snapshot)
CREATE, UPDATE, DELETE, READ = "c", "u", "d", "r"
OPS = (CREATE, UPDATE, DELETE, READ)
#: heartbeats only move the sender's checkpoint; they never reach the broker
HEARTBEAT = "h"

REF = "$ref"
B64 = "$b64"

# broker headers (STOMP)
ID_HEADER = "dbsync-id"
SITE_HEADER = "dbsync-site"
#: the message group (Artemis: JMSXGroupID → _AMQ_GROUP_ID; ActiveMQ Classic reads it too): the site, so the broker
#: gives one site's deliveries to one consumer in order while several receiver workers share the queue
GROUP_HEADER = "JMSXGroupID"
#: the user Artemis authenticated the sender as: with populate-validated-user in broker.xml the broker stamps it as
#: _AMQ_VALIDATED_USER, which reaches a STOMP consumer as JMSXUserID (a sender's own JMSXUserID is overwritten)
VALIDATED_USER_HEADER = "JMSXUserID"
#: the sender of rows imported from a signed bundle (`dbsync import`): this prefix and the key's fingerprint
SIGNED_USER_PREFIX = "signed:"
TABLE_HEADER = "dbsync-table"
ENCODING_HEADER = "dbsync-encoding"
DEFLATE = "deflate"
ROWS_HEADER = "dbsync-rows"  # messages in an envelope (what apply budgets its batches by)
SNAPSHOT_HEADER = "dbsync-snapshot"  # "1": rows of an initial load, which apply takes after live changes
#: No SEND carries Artemis's duplicate-detection header (`_AMQ_DUPL_ID`). Artemis caches such an id as it takes the
#: SEND, before the message is stored: a SEND cut off by a sender killed mid-batch can leave its id cached and its
#: message gone, and the same rows sent again after the restart are then dropped as duplicates (CI lost 20 patient
#: deletes so: docs/architecture.md, *No broker duplicate detection*). A re-sent message reaches the receiver, which drops a copy by its envelope id
#: (the inbox) and its message id (apply): at-least-once plus an idempotent receiver, with nothing left to the cache.

MAX_ID = 255  # the receiver stores ids in VARCHAR(255) columns
UUID_TEXT = re.compile(r"^[0-9A-Za-z][0-9A-Za-z-]{0,37}\Z")  # \Z: no trailing newline either


# ---- ids ---------------------------------------------------------------------------------------------------
def message_id(site: str, source: Mapping[str, Any], table: str, key: Any) -> str:
    """Deterministic: a message re-sent after a crash carries the same id, so the receiver can recognise it.

    Binlog coordinates repeat when a site's binlog history restarts (RESET MASTER, a restored or rebuilt server), so
    the id carries the sender's epoch (`source.epoch`: the site server's id and when the sender started reading this
    history, renewed with every new snapshot): unique for the life of the site."""
    epoch = source.get("epoch")
    site = f"{site}:{epoch}" if isinstance(epoch, str) and epoch else site
    if isinstance(source.get("repair"), str):  # a row `dbsync verify --repair` sends again: its run's own id
        return f"{site}:repair:{source['repair']}:{table}:{key}"
    if source.get("snapshot"):
        return f"{site}:snap:{source['file']}:{source['pos']}:{table}:{key}"
    return f"{site}:{source['file']}:{source['pos']}:{source['row']}"


def storable_id(message_id: str) -> str:
    """An id that fits the receiver's columns; never truncated into a collision (prefix + digest of the whole)."""
    if len(message_id) <= MAX_ID:
        return message_id
    digest = hashlib.sha256(message_id.encode()).hexdigest()
    return f"{message_id[:MAX_ID - 66]}#{digest}"


# ---- values ------------------------------------------------------------------------------------------------
def ref(table: str, uuid: str | None) -> dict[str, Any]:
    """A foreign key on the wire: the referenced row's uuid (never a local id)."""
    return {REF: table, "uuid": uuid}


def ref_target(value: Any) -> tuple[str, str] | None:
    """(table, uuid) of a wire reference, or None when the value is not one."""
    if isinstance(value, dict) and isinstance(value.get(REF), str) and isinstance(value.get("uuid"), str):
        return value[REF], value["uuid"]
    return None


def b64(value: bytes | bytearray | memoryview) -> dict[str, str]:
    return {B64: base64.b64encode(bytes(value)).decode()}


def is_b64(value: Any) -> bool:
    return isinstance(value, dict) and B64 in value


def unb64(value: Mapping[str, Any]) -> bytes:
    """The bytes of a ``{"$b64": …}`` value; ValueError when it is not valid base64."""
    try:
        return base64.b64decode(value[B64], validate=True)
    except (binascii.Error, TypeError) as exc:
        raise ValueError("invalid base64") from exc


def format_time(value: dt.timedelta) -> str:
    """A TIME value as MySQL prints it (may be negative or over 24 h)."""
    micros = value // dt.timedelta(microseconds=1)
    sign = "-" if micros < 0 else ""
    seconds, micro = divmod(abs(micros), 1_000_000)
    text = f"{sign}{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return text + (f".{micro:06d}" if micro else "")


def _default(value: Any) -> Any:
    if type(value) is dt.datetime:  # first: most of what capture's change events hold
        return value.isoformat(sep=" ")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return format_time(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return b64(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(record: Any) -> bytes:
    """JSON as every stage writes it (NDJSON lines, broker bodies): DECIMAL as text, binary as ``$b64``."""
    return orjson.dumps(record, default=_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


def dumps_event(event: Any) -> bytes:
    """A change event as capture writes it: as `dumps`, but DATETIME and DATE in orjson's own ISO 8601 form
    (``2024-03-01T10:00:00``), written without a call back into Python: a third of what capture added per row to
    the binlog decoder's work."""
    return orjson.dumps(event, default=_default)


@functools.lru_cache(maxsize=4096)  # the rows of one transaction share their dates: apply converts each once
def local_datetime(value: str, tz: dt.tzinfo) -> dt.datetime:
    """A wire DATETIME (ISO with offset) as a naive value in `tz`: how central stores a site's DATETIME.

    The sender gives a wall time its zone's offset with fold=0 (a time in a spring-forward gap or in the repeated
    hour gets the offset from before the change). When `tz` gives that wall time the same offset, the wall time is
    kept as it is: equal zones convert nothing, not even in a DST gap. Otherwise it is converted through UTC."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        return parsed
    wall = parsed.replace(tzinfo=None)
    if wall.replace(tzinfo=tz).utcoffset() == parsed.utcoffset():
        return wall
    try:
        return parsed.astimezone(tz).replace(tzinfo=None)
    except OverflowError as exc:  # "0001-01-01T00:00:00+01:00" has no UTC equivalent
        raise ValueError(f"datetime {value!r} out of range") from exc


# ---- the message -------------------------------------------------------------------------------------------
def message(*, site: str, table: str, op: str, uuid: str, source: Mapping[str, Any], key: Any,
            data: dict[str, Any] | None, sent: str) -> dict[str, Any]:
    """A sync message; `sent` is when its row was loaded at the site (the receiver's order guard compares it)."""
    return {
        "v": VERSION,
        "id": message_id(site, source, table, key),
        "site": site,
        "table": table,
        "op": op,
        "uuid": uuid,
        "snapshot": bool(source.get("snapshot")),
        "sent": sent,
        "source": source,
        "data": data,
    }


def is_heartbeat(record: Mapping[str, Any]) -> bool:
    """A heartbeat (not a message, not an inbox record): in a pipe it may reach apply, which ignores it."""
    return record.get("op") == HEARTBEAT and "inbox" not in record and "v" not in record


def check(message: Any, tables: Collection[str]) -> str | None:
    """Why a decoded message is not a valid sync message for these synced tables, or None when it is."""
    if not isinstance(message, dict):
        return reason("not_object", type=type(message).__name__)
    if message.get("v") != VERSION:
        return reason("version", version=str(message.get("v"))[:20])
    for key in ("id", "site", "table", "op", "uuid"):
        if not isinstance(message.get(key), str) or not message[key]:
            return reason("missing_field", field=key)
    if message["table"] not in tables:
        return reason("unknown_table", table=message["table"][:64])
    if message["op"] not in OPS:
        return reason("unknown_op", op=message["op"][:10])
    if not UUID_TEXT.match(message["uuid"]):
        return reason("invalid_uuid", uuid=message["uuid"][:40])
    problem = _source_problem(message.get("source"))
    if problem is not None:
        return problem
    if message.get("sent") is not None and not isinstance(message["sent"], str):
        return reason("sent_string")
    data = message.get("data")
    if message["op"] == DELETE:
        return None if data is None or isinstance(data, dict) else reason("delete_data")
    if not isinstance(data, dict):
        return reason("data_object")
    return None


def canonical_uuid(value: str) -> str:
    """The one form a uuid is compared and keyed by: lower case. MariaDB compares uuids case-insensitively
    (`users` and `allergy` have no unique index on uuid to stop a case-variant twin), so two spellings are one
    uuid; a row keeps the spelling it is stored with (CIEL concepts are upper case) and SQL finds it either way."""
    return value.lower()


def normalise_uuids(message: dict[str, Any]) -> str | None:
    """Validate every uuid a checked message carries, its own and each ``{"$ref", "uuid"}`` in its data, and put
    each in its canonical form (in place); why one is invalid (naming the column), or None. The receiver calls
    this once for every message it parses, v1 or inside an envelope, so nothing after it sees another case."""
    message["uuid"] = canonical_uuid(message["uuid"])
    data = message.get("data")
    if not isinstance(data, dict):
        return None
    for column, value in data.items():
        if not isinstance(value, dict) or REF not in value:
            continue
        uuid = value.get("uuid")
        if uuid is None:
            continue
        if not isinstance(uuid, str) or not UUID_TEXT.match(uuid):
            return reason("ref_uuid", table=message["table"], column=str(column)[:64], uuid=str(uuid)[:40])
        value["uuid"] = canonical_uuid(uuid)
    return None


#: what the receiver can store of a source position (BIGINT, INT and the binlog file name column)
_SOURCE_RANGES = {"pos": (0, 2**63 - 1), "row": (-1, 2**31 - 1), "server_id": (0, 2**32 - 1),
                  "ts_ms": (0, 253_402_300_799_999), "born": (0, 2**32 - 1),
                  # the site server's clock minus the sender host's, as the sender measured it (optional, ±10 years)
                  "skew_ms": (-315_360_000_000, 315_360_000_000)}


def _source_problem(source: Any) -> str | None:
    """Why a message's `source` (where in the site's binlog it comes from) is unusable, or None."""
    if source is None:
        return None
    if not isinstance(source, dict):
        return reason("source_object")
    for key, (low, high) in _SOURCE_RANGES.items():
        value = source.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return reason("source_integer", key=key, value=str(value)[:30], low=low, high=high)
    if source.get("file") is not None and (not isinstance(source["file"], str) or len(source["file"]) > 255):
        return reason("source_file")
    if source.get("epoch") is not None and (not isinstance(source["epoch"], str) or len(source["epoch"]) > 40):
        return reason("source_epoch")
    if source.get("gtid") is not None and (not isinstance(source["gtid"], str) or len(source["gtid"]) > 200):
        return reason("source_gtid")
    if source.get("repair") is not None and (not isinstance(source["repair"], str) or len(source["repair"]) > 80):
        return reason("source_repair")
    if source.get("gtid_pos") is not None and not isinstance(source["gtid_pos"], str):
        return reason("source_gtid_pos")  # the sender's own resume point: any length, never applied
    return None


# ---- on the broker -----------------------------------------------------------------------------------------
def encode(message: Mapping[str, Any], *, anycast: bool, compress_over: int,
           body: bytes | None = None) -> tuple[bytes, dict[str, str]]:
    """The STOMP body and headers of a persistent SEND (deflated when the JSON, `body` if given, is over
    `compress_over` bytes)."""
    headers = _headers(message, anycast)
    headers[TABLE_HEADER] = header_value(TABLE_HEADER, message.get("table", ""))
    return _deflated(dumps(message) if body is None else body, headers, compress_over)


#: C0 controls (NUL, CR, LF …) and DEL: STOMP cannot carry a NUL in a header at all (Artemis delivers it and the
#: consumer's frame ends there, its ack header lost), and CR/LF would end the header line
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


def header_value(name: str, value: Any) -> str:
    """`value` as the STOMP header `name`; ValueError naming both when it holds a control character."""
    text = str(value)
    if CONTROL_CHARACTERS.search(text):
        raise ValueError(f"broker header {name}: value {text[:60]!r} holds a control character "
                         "(a NUL, CR, LF or other C0 control, or DEL), which a STOMP header cannot carry")
    return text


def _headers(message: Mapping[str, Any], anycast: bool) -> dict[str, str]:
    message_id = header_value(ID_HEADER, message["id"])
    return {
        "persistent": "true",
        "destination-type": "ANYCAST" if anycast else "MULTICAST",
        ID_HEADER: message_id,
        SITE_HEADER: header_value(SITE_HEADER, message.get("site", "")),
        GROUP_HEADER: header_value(GROUP_HEADER, message.get("site", "")),
    }


def _deflated(body: bytes, headers: dict[str, str], compress_over: int) -> tuple[bytes, dict[str, str]]:
    if len(body) > compress_over:
        body = zlib.compress(body, 6)
        headers[ENCODING_HEADER] = DEFLATE
    return body, headers


def envelope_head(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """An envelope without its messages. Its id names the first message and a digest of every message id in it:
    the same rows re-sent after a crash give the same id (the inbox drops the copy); other
    boundaries give another id, and apply drops the rows it already applied by their own ids, so an envelope id
    never hides a row it does not hold."""
    digest = hashlib.blake2b(b"\n".join(str(m["id"]).encode() for m in messages), digest_size=8).hexdigest()
    first = messages[0]
    return {"v": ENVELOPE_VERSION, "id": storable_id(f"{first['id']}+{len(messages)}.{digest}"),
            "site": first.get("site"), "snapshot": bool(first.get("snapshot"))}


def envelope(messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Consecutive messages of one site (all live or all snapshot) as one broker message."""
    return {**envelope_head(messages), "messages": list(messages)}


def encode_envelope(messages: Sequence[Mapping[str, Any]], bodies: list[bytes], *, anycast: bool,
                    compress_over: int) -> tuple[bytes, dict[str, str]]:
    """The STOMP body and headers of an envelope of `messages`, whose JSON (`dumps`) is `bodies`: like `encode`,
    deflated as one batch, plus how many rows it holds and whether they are an initial load's."""
    head = envelope_head(messages)
    body = dumps(head)[:-1] + b',"messages":[' + b",".join(bodies) + b"]}"
    headers = _headers(head, anycast)
    headers[ROWS_HEADER] = str(len(messages))
    headers[SNAPSHOT_HEADER] = "1" if head["snapshot"] else "0"
    return _deflated(body, headers, compress_over)


def is_envelope(decoded: Any) -> bool:
    return isinstance(decoded, dict) and decoded.get("v") == ENVELOPE_VERSION


def envelope_problem(decoded: Mapping[str, Any]) -> str | None:
    """Why a version-2 body is not a usable envelope (its messages are checked one by one later), or None."""
    if not isinstance(decoded.get("id"), str) or not decoded["id"]:
        return reason("envelope_id")
    if not isinstance(decoded.get("site"), str) or not decoded["site"]:
        return reason("envelope_site")
    messages = decoded.get("messages")
    if not isinstance(messages, list) or not messages:
        return reason("envelope_messages")
    if len(messages) > MAX_ENVELOPE_MESSAGES:
        return reason("envelope_too_many", count=len(messages), limit=MAX_ENVELOPE_MESSAGES)
    return None


def delivery_rows(headers: Mapping[str, str]) -> int:
    """How many rows a delivery says it holds (1 for a v1 message), within what an envelope may hold."""
    try:
        return min(MAX_ENVELOPE_MESSAGES, max(1, int(headers.get(ROWS_HEADER) or 1)))
    except ValueError:
        return 1


def delivery_id(headers: Mapping[str, str]) -> str:
    """The message id of a delivery: the sender's, else the broker's (a message not sent by dbsync)."""
    return storable_id(headers.get(ID_HEADER) or f"broker:{headers.get('message-id', '')}")


def decode_body(body: bytes, headers: Mapping[str, str], max_inflated: int) -> bytes:
    """The JSON of a delivery; zlib.error when a deflated body is broken or inflates beyond `max_inflated`."""
    if headers.get(ENCODING_HEADER) != DEFLATE:
        return body
    inflater = zlib.decompressobj()
    inflated = inflater.decompress(body, max_inflated)
    if inflater.unconsumed_tail or not inflater.eof:
        raise zlib.error("truncated or over the size limit")
    return inflated
