"""Issue 11 item 3: TLS to the site and central databases, verified like the MySQL client's --ssl-ca."""

from __future__ import annotations

import dataclasses

import pymysql
import pytest
from helpers import dbsync, sender_config

from devtools.services.common import port_offset
from devtools.services.mariadb import destroy_mariadb, start_mariadb
from devtools.workload.openmrs import load_openmrs


@pytest.fixture(scope="module")
def tls_site(services):
    """A throwaway MariaDB with TLS on (the dev CA's server certificate: localhost, 127.0.0.1)."""
    tls = services.home / "tls"
    inst = start_mariadb("db-tls", port=23392 + port_offset(), server_id=392, extra_args=[
        f"--ssl-cert={tls / 'server.crt'}", f"--ssl-key={tls / 'server.key'}", f"--ssl-ca={tls / 'ca.crt'}"])
    yield inst
    destroy_mariadb(inst)


def _cipher(params) -> str:
    with params.connect() as conn, conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cur.fetchone()[1]


def test_a_verified_tls_connection_works_and_an_untrusted_server_is_refused(tls_site, services, broker_settings,
                                                                           tmp_path) -> None:
    trusted = dataclasses.replace(tls_site.repl, ssl_ca=services.artemis.ca_file)
    assert _cipher(trusted)  # TLS is on
    rogue = dataclasses.replace(tls_site.repl, ssl_ca=services.artemis.rogue_ca_file)
    with pytest.raises(pymysql.err.OperationalError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        _cipher(rogue)
    wrong_name = dataclasses.replace(tls_site.repl, host="localhost", ssl_ca=services.artemis.ca_file)
    assert _cipher(wrong_name)  # the certificate names localhost too

    # the sender reads the binlog over the same verified TLS (capture's replication connection included)
    load_openmrs(tls_site.admin, "tls_site")
    repl = tls_site.repl.with_database("tls_site")
    conf, env = sender_config(tmp_path, repl, broker_settings, destination="test.unused")
    conf.write_text(conf.read_text().replace("[site_db]\n", f'[site_db]\nssl_ca = "{services.artemis.ca_file}"\n'))
    run = dbsync("capture", "--config", str(conf), "--until-idle", "--max-events", "5", env=env, check=False)
    assert run.returncode == 0, run.stderr.decode()[-2000:]
    assert run.stdout.count(b"\n") >= 1
    conf.write_text(conf.read_text().replace(services.artemis.ca_file, services.artemis.rogue_ca_file))
    run = dbsync("capture", "--config", str(conf), "--until-idle", env=env, check=False)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 3 and len(lines) == 1 and "certificate verify failed" in lines[0].lower(), lines


def test_without_a_ca_file_tls_is_used_when_offered_and_its_context_made_once(tls_site, services) -> None:
    """No ssl_ca: PyMySQL's preferred TLS, as before (encrypted when the server offers it, not verified, plain
    when it does not), but with one context per process: PyMySQL built one per connection, loading the system's
    CA store it then did not use (42 ms of CPU a connection against 0.6 ms for the rest)."""
    from dbsync_cli.db import Connection

    plain = dataclasses.replace(tls_site.repl, ssl_ca=None)
    assert _cipher(plain)  # the server offers TLS: encrypted
    contexts = set()
    for params in (plain, plain, services["central"].admin):  # the dev central has no TLS: plain, not refused
        with params.connect() as conn:
            assert isinstance(conn, Connection)
            contexts.add(id(conn.ctx))
    assert len(contexts) == 1
    assert _cipher(services["central"].admin) == ""
