"""The bundle file of sync by file: the frames the sender would have sent to the broker, signed by the site.

    b"DBSYNC-BUNDLE 1\\n"
    b"F" u32 header-length, the frame's STOMP headers as JSON, u32 body-length, the body   (repeated)
    b"T" u32 manifest-length, the manifest as JSON, 64 bytes of Ed25519 signature over b"dbsync-bundle-1\\0" + manifest

A frame is exactly what publish sends (a deflated v2 envelope with its headers), so central stores it in its inbox
as consume would and apply judges it by the same rules. The manifest names the site, the bundle, its frames and
rows, the binlog positions it covers and the SHA-256 of every byte before it: one signature covers the whole file.
Lengths are big-endian; nothing is read past a length the reader cannot afford (`max_frame_bytes`).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from dbsync_cli import signing
from dbsync_cli.i18n import _

MAGIC = b"DBSYNC-BUNDLE 1\n"
SIGNED_PREFIX = b"dbsync-bundle-1\0"
MAX_HEADER_BYTES = 64 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024
_LENGTH = struct.Struct(">I")


class BundleError(ValueError):
    """A file that is no whole bundle, or not signed by the key central holds for its site: one line."""


@dataclass(frozen=True)
class Frame:
    """One broker frame as publish would send it (what consume stores)."""

    headers: dict[str, str]
    body: bytes


def json_frame(value: Any, table: str) -> tuple[bytes, dict[str, str]]:
    """A frame of verify by file: `value` as deflated JSON (no sync message: never stored in the inbox)."""
    return zlib.compress(orjson.dumps(value), 6), {"dbsync-verify": "1", "dbsync-table": table}


def json_of(frame: Frame, limit: int, path: Path) -> Any:
    """The value of a `json_frame` (at most `limit` bytes inflated: a deflate bomb is damage)."""
    try:
        inflater = zlib.decompressobj()
        data = inflater.decompress(frame.body, limit + 1)
        if len(data) > limit or inflater.unconsumed_tail:
            raise BundleError(_("{path}: a frame inflates beyond {limit:,} bytes").format(path=path, limit=limit))
        return orjson.loads(data)
    except (zlib.error, orjson.JSONDecodeError):
        raise BundleError(_("{path}: a frame is not deflated JSON").format(path=path)) from None


class BundleWriter:
    """Appends frames to `path`; `resume_at`: bytes of an earlier, interrupted writing to keep (the rest is cut)."""

    def __init__(self, path: Path, resume_at: int = 0) -> None:
        self.path = path
        self.digest = hashlib.sha256()
        if resume_at:
            self.out: IO[bytes] = path.open("r+b")
            self.out.truncate(resume_at)
            self.out.seek(0)
            head = self.out.read(len(MAGIC))
            if head != MAGIC:
                raise BundleError(_("{path}: not a bundle begun by dbsync export").format(path=path))
            self.digest.update(head)
            while chunk := self.out.read(1 << 20):
                self.digest.update(chunk)
        else:
            self.out = path.open("wb")
            self._write(MAGIC)

    def _write(self, data: bytes) -> None:
        self.out.write(data)
        self.digest.update(data)

    def frame(self, body: bytes, headers: dict[str, str]) -> None:
        head = orjson.dumps(headers)
        self._write(b"F" + _LENGTH.pack(len(head)) + head + _LENGTH.pack(len(body)))
        self._write(body)

    def sync(self) -> int:
        """Make every frame so far durable; returns the file's length (where a resumed writing continues)."""
        self.out.flush()
        os.fsync(self.out.fileno())
        return self.out.tell()

    def finish(self, key: Ed25519PrivateKey, manifest: dict[str, Any]) -> dict[str, Any]:
        """Seal the file: the manifest (with the SHA-256 of everything before it) and its signature."""
        manifest = {**manifest, "sha256": self.digest.hexdigest(), "key": signing.public_text(key)}
        body = orjson.dumps(manifest)
        self.out.write(b"T" + _LENGTH.pack(len(body)) + body + signing.sign(key, SIGNED_PREFIX + body))
        self.sync()
        self.out.close()
        return manifest

    def close(self) -> None:
        self.out.close()


def _read(stream: IO[bytes], size: int, path: Path, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise BundleError(_("{path}: cut short in {what} (an incomplete copy?)").format(path=path, what=what))
    return data


def _length(stream: IO[bytes], path: Path, what: str, limit: int) -> int:
    (size,) = _LENGTH.unpack(_read(stream, 4, path, what))
    if size > limit:
        raise BundleError(_("{path}: {what} of {size:,} bytes is over the limit of {limit:,}").format(
            path=path, what=what, size=size, limit=limit))
    return size


def _frames(stream: IO[bytes], path: Path, max_frame_bytes: int, *, keep: bool) -> Iterator[Frame | dict[str, Any]]:
    """Each frame (bodies skipped unless `keep`), then the manifest with `_signature` and `_hashed` added."""
    digest = hashlib.sha256()
    magic = stream.read(len(MAGIC))
    if magic != MAGIC:
        raise BundleError(_("{path}: not a dbsync bundle").format(path=path))
    digest.update(magic)
    while True:
        kind = _read(stream, 1, path, _("a frame"))
        if kind == b"T":
            size = _length(stream, path, _("the manifest"), MAX_MANIFEST_BYTES)
            body = _read(stream, size, path, _("the manifest"))
            signature = _read(stream, signing.SIGNATURE_BYTES, path, _("the signature"))
            if stream.read(1):
                raise BundleError(_("{path}: bytes after the signature").format(path=path))
            try:
                manifest = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise BundleError(_("{path}: the manifest is not JSON").format(path=path)) from None
            if not isinstance(manifest, dict):
                raise BundleError(_("{path}: the manifest is not an object").format(path=path))
            yield {**manifest, "_signature": signature, "_signed": body, "_hashed": digest.hexdigest()}
            return
        if kind != b"F":
            raise BundleError(_("{path}: damaged (a frame begins with {byte!r})").format(path=path, byte=kind))
        size = _length(stream, path, _("a frame's headers"), MAX_HEADER_BYTES)
        head = _read(stream, size, path, _("a frame's headers"))
        body_size = _length(stream, path, _("a frame"), max_frame_bytes)
        body = _read(stream, body_size, path, _("a frame"))
        digest.update(kind + _LENGTH.pack(size) + head + _LENGTH.pack(body_size) + body)
        if keep:
            try:
                headers = orjson.loads(head)
            except orjson.JSONDecodeError:
                raise BundleError(_("{path}: a frame's headers are not JSON").format(path=path)) from None
            if not isinstance(headers, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                        for k, v in headers.items()):
                raise BundleError(_("{path}: a frame's headers are not text").format(path=path))
            yield Frame(headers, body)


def manifest(path: Path, max_frame_bytes: int) -> dict[str, Any]:
    """The manifest of a whole, undamaged bundle (its signature is checked by `check`)."""
    with path.open("rb") as stream:
        for item in _frames(stream, path, max_frame_bytes, keep=False):
            if isinstance(item, dict):
                if item["_hashed"] != item.get("sha256"):
                    raise BundleError(_("{path}: damaged (its content does not match its manifest)").format(path=path))
                return item
    raise BundleError(_("{path}: no manifest").format(path=path))  # pragma: no cover - _frames ends with one


def check(found: dict[str, Any], public_key: str, path: Path, who: str | None = None) -> None:
    """The manifest's signature is the recorded key's (BundleError naming the site, or `who`, otherwise)."""
    if signing.verifies(public_key, found["_signature"], SIGNED_PREFIX + found["_signed"]):
        return
    if who is not None:
        raise BundleError(_("{path}: not signed by {who}'s key (sender.central_public_key)").format(path=path,
                                                                                                    who=who))
    raise BundleError(_("{path}: not signed by the key recorded for site {site!r} (made by another site, or the "
                        "site's key changed: confirm the new key with the site by another way, then dbsync sites "
                        "update {site} --public-key …)").format(path=path, site=found.get("site")))


def frames(path: Path, max_frame_bytes: int) -> Iterator[Frame]:
    """The frames of a bundle `check` accepted (read again: a file is not trusted to stay the same between two
    reads, so the digest is checked again at the end and a change raises BundleError)."""
    with path.open("rb") as stream:
        for item in _frames(stream, path, max_frame_bytes, keep=True):
            if isinstance(item, Frame):
                yield item
            elif item["_hashed"] != item.get("sha256"):
                raise BundleError(_("{path}: changed while it was read").format(path=path))
