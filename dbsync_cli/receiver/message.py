"""Validating an incoming sync message: every way it can be wrong gets one clear reason, never an exception."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from dbsync_cli import wire
from dbsync_cli.openmrs import SchemaModel, SyncedTable
from dbsync_cli.receiver.reasons import reason
from dbsync_cli.wire import dumps

_POSITION = re.compile(r": line \d+ column \d+ \(char \d+\)$")  # orjson's; the message id says where


@dataclass
class Parsed:
    message_id: str
    raw: bytes
    message: dict[str, Any] | None = None
    table: SyncedTable | None = None
    inbox: int | None = None
    site: str | None = None
    error: str | None = None
    header_site: str | None = None  # the transport's dbsync-site header (inbox records)
    broker_user: str | None = None  # who the broker says sent it ("" none stamped); None: not from the broker
    refs: list[tuple[str, str]] | None = None  # (identity table, uuid) it references, once apply looked
    sent_uuid: str | None = None  # the message's uuid as the site spelled it (`message["uuid"]` is canonical)

    def __post_init__(self) -> None:
        self.message_id = wire.storable_id(self.message_id)  # every id in the form the receiver's columns hold

    def digest(self) -> bytes:
        """Which change this is (site, table, op, uuid and where in the binlog it comes from), stored with its id, so
        that an id seen again for another change (a forged id, coordinates reused by a restarted binlog) is not
        taken as proof that this one was applied. The row's data and load time are left out: a message re-sent
        after a crash is the same change with the row as it is now, and stays a duplicate."""
        message = self.message
        if message is None:
            return hashlib.blake2b(self.raw, digest_size=16).digest()
        raw_source = message.get("source")
        source: dict[str, Any] = raw_source if isinstance(raw_source, dict) else {}
        where = [source.get(k) for k in ("epoch", "file", "pos", "row", "snapshot", "key")]
        content = [*(message.get(k) for k in ("site", "table", "op", "uuid")), where]
        try:
            text = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
        except TypeError:
            text = self.raw
        return hashlib.blake2b(text, digest_size=16).digest()


def entity_key(model: SchemaModel, table: SyncedTable | None, uuid: Any) -> str | None:
    """person and patient (orders and its subclasses) are one entity: they share the identity table's uuid."""
    if table is None or not isinstance(uuid, str):
        return None
    return f"{table.identity.table}:{uuid}"


def _body(record: dict[str, Any]) -> bytes:
    body: Any = record.get("body")
    if wire.is_b64(body):
        return wire.unb64(body)
    if isinstance(body, str):
        return body.encode("utf-8", "surrogateescape")
    return dumps(body)


def parse_raw(raw: bytes, message_id: str, site: str | None, model: SchemaModel, max_bytes: int,
              inbox: int | None = None, broker_user: str | None = None, header_site: str | None = None) -> Parsed:
    """A stored body of one message (retry or conflict queue); `broker_user` and `header_site` as stored with it
    (None: trusted input)."""
    items = expand_raw(raw, message_id, site, model, max_bytes, inbox=inbox, broker_user=broker_user,
                       header_site=header_site)
    if len(items) == 1:
        return items[0]
    return Parsed(message_id=message_id, raw=raw, inbox=inbox, site=site, header_site=header_site,
                  broker_user=broker_user, error=reason("one_expected", count=len(items)))


def expand_raw(raw: bytes, message_id: str, site: str | None, model: SchemaModel, max_bytes: int,
               inbox: int | None = None, broker_user: str | None = None,
               header_site: str | None = None) -> list[Parsed]:
    """The messages of a body: one for a v1 message (or anything unusable), each of a v2 envelope's in order. An
    inbox row's site is its header, which every message of an envelope must name too."""
    header_site = site if inbox is not None else header_site
    item = Parsed(message_id=message_id, raw=raw, inbox=inbox, site=site, header_site=header_site,
                  broker_user=broker_user)
    if len(raw) > max_bytes:
        item.error = reason("too_large", size=len(raw), limit=max_bytes)
        return [item]
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        item.error = reason("malformed_json", error=_POSITION.sub("", str(exc)))
        return [item]
    if not wire.is_envelope(message):
        return [_finish(item, message, model)]
    item.error = wire.envelope_problem(message)
    if item.error is not None:
        return [item]
    items = []
    for index, inner in enumerate(message["messages"]):
        inner_id = inner.get("id") if isinstance(inner, dict) else None
        part = Parsed(message_id=inner_id if isinstance(inner_id, str) and inner_id else f"{message['id']}#{index}",
                      raw=dumps(inner), inbox=inbox, site=site, header_site=header_site, broker_user=broker_user)
        if isinstance(inner, dict) and inner.get("site") != message["site"]:
            part.error = reason("envelope_other_site", site=str(inner.get("site"))[:100],
                                envelope_site=message["site"][:100])
            items.append(part)
            continue
        items.append(_finish(part, inner, model))
    return items


def expand(record: dict[str, Any], model: SchemaModel, max_bytes: int) -> list[Parsed]:
    """An inbox record (`{"inbox", "message_id", "site", "body"}`) or a bare sync message, as the messages it
    holds (an inbox body may be a v2 envelope)."""
    if "inbox" in record:
        message_id = str(record.get("message_id") or f"inbox:{record['inbox']}")
        try:
            inbox = int(record["inbox"])
        except (TypeError, ValueError):
            return [Parsed(message_id=message_id, raw=dumps(record),
                           error=reason("inbox_id", inbox=str(record["inbox"])[:20]))]
        try:
            body = _body(record)
        except ValueError:
            return [Parsed(message_id=message_id, raw=dumps(record), inbox=inbox, site=record.get("site"),
                           error=reason("inbox_base64"))]
        user = record.get("broker_user")
        return expand_raw(body, message_id, record.get("site"), model, max_bytes, inbox=inbox,
                          broker_user=user if isinstance(user, str) else "")
    try:
        raw = dumps(record)
    except TypeError as exc:  # only from an in-process caller: JSON input cannot hold what orjson cannot write
        return [Parsed(message_id=f"noid:{id(record)}", raw=b"{}", error=reason("not_json", error=exc))]
    fallback = "noid:" + hashlib.sha1(raw).hexdigest()  # noqa: S324 - an identifier, not security
    return expand_raw(raw, str(record.get("id") or fallback), None, model, max_bytes)


def parse(record: dict[str, Any], model: SchemaModel, max_bytes: int) -> Parsed:
    """One message of a record (the first, or the error of an envelope where one message was expected)."""
    items = expand(record, model, max_bytes)
    return items[0] if len(items) == 1 else Parsed(
        message_id=items[0].message_id, raw=b"{}", error=reason("envelope_of", count=len(items)))


def _finish(item: Parsed, message: Any, model: SchemaModel) -> Parsed:
    item.error = wire.check(message, model.synced)
    if item.error is None:
        item.sent_uuid = message["uuid"]
        item.error = wire.normalise_uuids(message)
    if item.error is None:
        item.message = message
        item.table = model.synced[message["table"]]
        item.site = message["site"]
        if item.header_site is not None and item.header_site != message["site"]:
            item.error = reason("header_site", site=message["site"], header=wire.SITE_HEADER,
                                header_site=item.header_site)
        # the sender's deterministic id, whatever the transport called it, in the form the receiver stores
        item.message_id = wire.storable_id(message["id"])
    return item
