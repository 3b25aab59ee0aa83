"""A private CA, a server certificate for localhost/127.0.0.1 and an unrelated "rogue" CA.

The broker's STOMP+TLS acceptor uses the server certificate (as a PKCS12 keystore); clients trust
``ca.crt``. ``rogue-ca.crt`` signs nothing we serve, so a client that trusts only it must refuse the
broker: that is how tests prove certificate verification is real. Made with openssl only; the
keystore password is read from a secret file, never passed on a command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devtools.services.common import run, secret, secret_file

DAYS = "825"


@dataclass(frozen=True)
class TlsFiles:
    ca_file: Path
    rogue_ca_file: Path
    server_cert: Path
    server_key: Path
    keystore: Path
    keystore_password: str

    @property
    def all_paths(self) -> tuple[Path, ...]:
        return (self.ca_file, self.rogue_ca_file, self.server_cert, self.server_key, self.keystore)


def _make_ca(dir_: Path, stem: str, cn: str) -> None:
    key, crt = dir_ / f"{stem}.key", dir_ / f"{stem}.crt"
    run(["openssl", "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", DAYS, "-subj", f"/CN={cn}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        what=f"openssl: {stem}")
    os.chmod(key, 0o600)


def ensure_tls(home: Path) -> TlsFiles:
    """Create the files under ``<home>/tls`` unless they are all there already."""
    dir_ = home / "tls"
    files = TlsFiles(ca_file=dir_ / "ca.crt", rogue_ca_file=dir_ / "rogue-ca.crt",
                     server_cert=dir_ / "server.crt", server_key=dir_ / "server.key",
                     keystore=dir_ / "server.p12", keystore_password=secret(home, "artemis-keystore"))
    if all(p.exists() for p in files.all_paths):
        return files
    dir_.mkdir(parents=True, exist_ok=True)
    os.chmod(dir_, 0o700)
    _make_ca(dir_, "ca", "dbsync dev CA")
    _make_ca(dir_, "rogue-ca", "dbsync rogue CA (trust nothing it signs)")
    csr, ext = dir_ / "server.csr", dir_ / "server.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n"
                   "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(files.server_key), "-out", str(csr), "-subj", "/CN=localhost"], what="openssl: server key")
    os.chmod(files.server_key, 0o600)
    run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(files.ca_file), "-CAkey", str(dir_ / "ca.key"),
         "-CAcreateserial", "-out", str(files.server_cert), "-days", DAYS, "-extfile", str(ext)],
        what="openssl: sign server certificate")
    pw = secret_file(home, "artemis-keystore")
    run(["openssl", "pkcs12", "-export", "-in", str(files.server_cert), "-inkey", str(files.server_key),
         "-certfile", str(files.ca_file), "-name", "server", "-out", str(files.keystore),
         "-passout", f"file:{pw}"], what="openssl: PKCS12 keystore")
    os.chmod(files.keystore, 0o600)
    csr.unlink(missing_ok=True)
    return files
