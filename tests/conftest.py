"""Shared fixtures: the real throwaway services (scripts/services) and fresh OpenMRS databases on them.

Tests under tests/service/ are marked ``service`` automatically. The ``services`` fixture starts
whatever is not running and leaves everything running afterwards (scripts/test stops it).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbsync_cli.broker import BrokerSettings
from dbsync_cli.db import DbParams
from devtools.services import Services, ensure_up

#: tests read the CLI's English messages: a developer's own language must not change them (tests ask for pt)
for _name in ("DBSYNC_LANG", "LANGUAGE", "LC_ALL", "LC_MESSAGES"):
    os.environ.pop(_name, None)
os.environ["LANG"] = "C.UTF-8"

SERVICE_DIR = Path(__file__).parent / "service"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_DIR in item.path.parents:
            item.add_marker(pytest.mark.service)


@pytest.fixture(scope="session")
def services() -> Services:
    """MariaDB central/site1/site2 + Artemis, started if needed (idempotent, ~0.2 s when running)."""
    return ensure_up()


@pytest.fixture
def broker_settings(services: Services) -> BrokerSettings:
    """The plain STOMP acceptor, logged in as the dbsync user."""
    assert services.artemis is not None, "artemis is not running"
    return services.artemis.settings()


@pytest.fixture
def broker_tls_settings(services: Services) -> BrokerSettings:
    """The STOMP+TLS acceptor, trusting the dev CA (host name verified)."""
    assert services.artemis is not None, "artemis is not running"
    return services.artemis.settings(tls=True)


def _drop(admin: DbParams, database: str) -> None:
    conn = admin.with_database(None).connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{database}`")
    finally:
        conn.close()


@pytest.fixture
def openmrs_db(services: Services, request: pytest.FixtureRequest) -> Iterator[Callable[..., DbParams]]:
    """Factory: ``make(instance, name=None, metadata=True)`` -> admin DbParams of a fresh OpenMRS database.

    Without ``name`` the database gets a unique name derived from the test; with ``name`` exactly that
    name is used (an existing database of that name is dropped first). All are dropped after the test.
    """
    created: list[tuple[DbParams, str]] = []

    def make(instance: str, name: str | None = None, metadata: bool = True) -> DbParams:
        from devtools.workload.openmrs import load_openmrs  # written in parallel; import when used

        admin = services[instance].admin
        if name is None:
            stem = re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:40]
            name = f"t_{stem}_{uuid.uuid4().hex[:8]}"
        else:
            _drop(admin, name)
        created.append((admin, name))
        load_openmrs(admin, name, metadata=metadata)
        return admin.with_database(name)

    yield make
    for admin, name in reversed(created):
        _drop(admin, name)
