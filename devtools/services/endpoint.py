"""The endpoints of a broker the tests may use besides Artemis (ActiveMQ Classic, RabbitMQ), and its users."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devtools.services.common import secret

if TYPE_CHECKING:
    from dbsync_cli.broker import BrokerSettings

#: per-site broker users and central's, as on the Artemis of the services (devtools/services/artemis.py)
SITE_USERS = ("site1", "site2", "site3", "site4")
CENTRAL_USER = "central"


def user_password(home: Path, user: str) -> str:
    """The same password a user has on every broker of one services home (generated once)."""
    return secret(home, f"artemis-{user}")


@dataclass(frozen=True)
class BrokerEndpoint:
    """One running broker: `kind` activemq | rabbitmq; `vhost` what its STOMP CONNECT must name (RabbitMQ)."""

    kind: str
    home: Path
    host: str
    stomp_port: int
    tls_port: int
    ca_file: str
    vhost: str | None = None
    management_url: str | None = None  # RabbitMQ's management HTTP API

    def settings(self, user: str = CENTRAL_USER, *, tls: bool = False) -> BrokerSettings:
        """Connection settings for `user` (central's by default) on the plain or the TLS STOMP port."""
        from dbsync_cli.broker import BrokerSettings

        return BrokerSettings(host=self.host, port=self.tls_port if tls else self.stomp_port, user=user,
                              password=user_password(self.home, user), tls=tls,
                              ca_file=self.ca_file if tls else None, vhost=self.vhost)

    def site_settings(self, site: str, *, tls: bool = False) -> BrokerSettings:
        return self.settings(site, tls=tls)
