"""A site's Ed25519 key: it signs the bundles the site carries to central by file (sync by file), so central knows
which site made a bundle without a broker login. The private key stays in the sender's home (owner-only); central
records the public key with `dbsync sites add SITE --public-key ed25519:…` and refuses a bundle signed by any other.

The `cryptography` package (pyca) does the signing: hand-written elliptic-curve code has no place here.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from dbsync_cli.files import private_dir, private_file
from dbsync_cli.i18n import _

PREFIX = "ed25519:"
KEY_FILE = "site-key.ed25519"  # the raw 32-byte private key, in the sender's home
SIGNATURE_BYTES = 64


class BadPublicKey(ValueError):
    """A public key that is not `ed25519:` and 32 bytes in base64 (one line for the operator)."""


def site_key(home: Path) -> Ed25519PrivateKey:
    """This site's private key, made at its first use (owner-only file, written whole or not at all)."""
    path = home / KEY_FILE
    if path.exists():
        private_file(path)
        return Ed25519PrivateKey.from_private_bytes(path.read_bytes())
    private_dir(home)
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(raw)
        out.flush()
        os.fsync(out.fileno())
    temporary.replace(path)
    return key


def public_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """`ed25519:<base64 of the 32 raw bytes>`: what `sites add --public-key` takes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return PREFIX + base64.b64encode(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def parse_public(text: str) -> Ed25519PublicKey:
    """A public key as `public_text` writes it (surrounding blanks ignored)."""
    value = text.strip()
    if not value.startswith(PREFIX):
        raise BadPublicKey(_("a public key starts with {prefix} (dbsync export --public-key prints the site's)").format(
            prefix=PREFIX))
    try:
        raw = base64.b64decode(value[len(PREFIX):], validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise BadPublicKey(_("the public key is not 32 bytes of base64 after {prefix}").format(prefix=PREFIX)) from None


def fingerprint(text: str) -> str:
    """A short stable name of a public key (what inbox and queue rows record as the signer)."""
    return hashlib.sha256(parse_public(text).public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def sign(key: Ed25519PrivateKey, data: bytes) -> bytes:
    return key.sign(data)


def verifies(public: str, signature: bytes, data: bytes) -> bool:
    try:
        parse_public(public).verify(signature, data)
    except (InvalidSignature, BadPublicKey):
        return False
    return True
