"""Complex obs files (an X-ray, a scanned form): what both sides agree on about them, and nothing else.

OpenMRS keeps the bytes of a complex obs in its application data directory's `complex_obs/` folder (global property
`obs.complex_obs_dir`) and names the file in `obs.value_complex` as `<title or mime>|<file name>` (older rows: the
file name alone); its AbstractHandler.parseDataKey takes the last `|` part. A file travels on its own broker lane
(`<destination>.files`), in chunks; these are the chunk's headers, its encoding, the file name rules both sides
apply (a name that could leave the folder is refused, never opened) and the digest `verify` compares.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

from dbsync_cli.lru import LruMap

#: the column that names the file, and the table
TABLE, COLUMN = "obs", "value_complex"

#: the file lane's destination beside the rows' (`broker.destination`)
SUFFIX = ".files"

#: chunk headers (STOMP escapes `:`, `\`, CR and LF in values; a NUL cannot be carried, and a name with one is
#: refused before it is sent)
SITE = "dbsync-site"
NAME = "dbsync-file-name"
SHA256 = "dbsync-file-sha256"  # of the whole file's bytes
SIZE = "dbsync-file-size"
CHUNKS = "dbsync-file-chunks"
SEQ = "dbsync-file-seq"
CHUNK_SHA256 = "dbsync-chunk-sha256"  # of the body as sent (after deflate)
ENCODING = "dbsync-chunk-encoding"  # deflate | identity
OBS = "dbsync-file-obs"  # the obs uuid that named it (for the operator)
REPAIR = "dbsync-file-repair"  # set by verify --repair and resync: central may replace its own copy of the site's file
GONE = "dbsync-file-gone"  # "1": the site says this file will never come (its obs was deleted or renamed there first)
DEFLATE, IDENTITY = "deflate", "identity"

MAX_NAME_BYTES = 255
_READ = 1 << 20


def destination(sync_destination: str) -> str:
    return sync_destination + SUFFIX


def folder(value: str | None) -> Path | None:
    """The complex obs folder a config names (None: files are not synced)."""
    return Path(value).expanduser() if value else None


def file_name(value_complex: object) -> str | None:
    """The file name a value_complex names (None: no file), as OpenMRS's parseDataKey reads it (Java's split
    drops trailing empty parts)."""
    if not isinstance(value_complex, str) or value_complex == "":
        return None
    parts = value_complex.split("|")
    while len(parts) > 1 and parts[-1] == "":
        parts.pop()
    return parts[0] if len(parts) < 2 else parts[-1]


def refusal(name: str) -> str | None:
    """Why a file name is refused (None: a plain name inside the folder). A name that could leave the folder, or
    that no file system holds, is never opened on either side."""
    if name == "":
        return "empty"
    if "\x00" in name:
        return "NUL byte"
    if "/" in name or "\\" in name:
        return "path separator"
    if name in (".", ".."):
        return "not a file name"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"longer than {MAX_NAME_BYTES} bytes"
    if any(ord(c) < 32 for c in name):
        return "control character"
    return None


def shown(name: str) -> str:
    """A name as one line names it (NUL and control characters escaped, cut to 120 characters)."""
    return repr(name[:120])


def path_in(folder: Path, name: str) -> Path:
    """The file's path in `folder`; ValueError for a refused name."""
    why = refusal(name)
    if why is not None:
        raise ValueError(why)
    return folder / name


def encode_chunk(raw: bytes) -> tuple[bytes, str]:
    """A chunk's body: deflated when that makes it smaller (images and PDFs mostly do not shrink)."""
    packed = zlib.compress(raw, 6)
    return (packed, DEFLATE) if len(packed) < len(raw) else (raw, IDENTITY)


def decode_chunk(body: bytes, encoding: str, limit: int) -> bytes:
    """A chunk's bytes; ValueError for an unknown encoding or one that inflates beyond `limit`."""
    if encoding == IDENTITY:
        if len(body) > limit:
            raise ValueError(f"chunk holds more than {limit} bytes")
        return body
    if encoding != DEFLATE:
        raise ValueError(f"unknown chunk encoding {encoding[:20]!r}")
    inflater = zlib.decompressobj()
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit or inflater.unconsumed_tail:
        raise ValueError(f"chunk inflates beyond {limit} bytes")
    return out


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading only when it is a regular file itself. The folder belongs to OpenMRS's user, who
    could swap in a symbolic link (to dbsync's secrets) between a check and an open: a link is never followed
    (O_NOFOLLOW), and a FIFO or device is never read (O_NONBLOCK, then fstat)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_of(source: Path | BinaryIO) -> tuple[str, int]:
    """The file's sha256 (hex) and size, read in 1 MB pieces (constant memory); a path is opened as
    `open_regular` does, an open file is read from its start."""
    digest = hashlib.sha256()
    size = 0
    handle = open_regular(source) if isinstance(source, Path) else source
    try:
        handle.seek(0)
        while block := handle.read(_READ):
            digest.update(block)
            size += len(block)
    finally:
        if isinstance(source, Path):
            handle.close()
    return digest.hexdigest(), size


_DIGESTS = LruMap(4096)


def digest_for_verify(folder: Path | None, value_complex: object) -> str | None:
    """What `verify` adds to an obs row's digest: the sha256 of its file, `absent` when the folder lacks it,
    `refused` for a name refused here; None when the row names no file or no folder is configured. Cached by
    path, size and modification time (a 40 MB X-ray is read once per change, not once per verify round)."""
    name = file_name(value_complex)
    if folder is None or name is None:
        return None
    if refusal(name) is not None:
        return "refused"
    path = folder / name
    try:
        info = path.stat()
    except OSError:
        return "absent"
    key = (str(path), info.st_size, info.st_mtime_ns)
    found = _DIGESTS.get(key)
    if found is None:
        try:
            found = sha256_of(path)[0]
        except OSError:
            return "absent"
        _DIGESTS.put(key, found)
    return str(found)
