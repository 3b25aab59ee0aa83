"""BrokerSettings parsing and the password-free error path (no broker needed)."""

from __future__ import annotations

import socket

import pytest

from dbsync_cli.broker import BrokerError, BrokerSettings, open_connection


def test_from_url_plain_and_tls() -> None:
    plain = BrokerSettings.from_url("stomp://mq.example.org:61613", user="u", password="p")
    assert (plain.host, plain.port, plain.tls, plain.user) == ("mq.example.org", 61613, False, "u")
    tls = BrokerSettings.from_url("stomp+ssl://mq.example.org", ca_file="/ca.pem")
    assert (tls.port, tls.tls, tls.ca_file, tls.verify_hostname) == (61614, True, "/ca.pem", True)
    assert tls.url == "stomp+ssl://mq.example.org:61614"


@pytest.mark.parametrize("url", ["http://h:1", "stomp://u:secret@h:1", "stomp://:1", "stomp://h:notaport"])
def test_from_url_rejects(url: str) -> None:
    with pytest.raises(BrokerError) as err:
        BrokerSettings.from_url(url)
    assert "secret" not in str(err.value)


def test_repr_hides_password() -> None:
    assert "s3cret" not in repr(BrokerSettings(password="s3cret"))


def test_tls_context_verifies_by_default() -> None:
    ctx = BrokerSettings(tls=True).ssl_context()
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"


def test_refused_port_gives_one_line_error_without_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        settings = BrokerSettings(port=port, user="u", password="pw-should-not-show", connect_timeout=2)
        with pytest.raises(BrokerError) as err:
            open_connection(settings)
    text = str(err.value)
    assert f"127.0.0.1:{port}" in text and "pw-should-not-show" not in text and "\n" not in text
