"""examples/artemis/broker.xml, read as Artemis reads it: the permissions the documented deployment needs, and the
docs include the file rather than retyping it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from devtools.services import broker_config

ROOT = Path(__file__).resolve().parents[2]
FILE = ROOT / "examples" / "artemis" / "broker.xml"
NS = {"c": "urn:activemq:core"}
ALL = {"createNonDurableQueue", "deleteNonDurableQueue", "createDurableQueue", "deleteDurableQueue", "createAddress",
       "deleteAddress", "consume", "browse", "send", "manage"}


def _security(text: str) -> dict[str, dict[str, set[str]]]:
    """match -> permission type -> roles."""
    core = ET.fromstring(text).find("c:core", NS)
    assert core is not None
    found: dict[str, dict[str, set[str]]] = {}
    for setting in core.iterfind("c:security-settings/c:security-setting", NS):
        perms = found.setdefault(setting.get("match", ""), {})
        for p in setting.iterfind("c:permission", NS):
            perms[p.get("type", "")] = set(p.get("roles", "").split(","))
    return found


def test_the_administrator_keeps_every_permission_everywhere() -> None:
    """`artemis user add` needs manage on the management address (AMQ229213 when a block forgets amq)."""
    for match, perms in _security(FILE.read_text()).items():
        assert set(perms) == ALL, (match, ALL - set(perms))
        assert all("amq" in roles for roles in perms.values()), match


def test_central_reads_management_by_its_exact_name_and_answers_come_back_to_it() -> None:
    security = _security(FILE.read_text())
    assert "activemq.management#" not in security  # a literal that matches nothing: status fell to `#`
    management = security["activemq.management"]
    # on a fresh broker central's first status request creates the address and its queue (AMQ229213 otherwise)
    assert {"send", "manage", "createAddress", "createDurableQueue"} <= {
        t for t, roles in management.items() if "dbsync-receiver" in roles}
    replies = security["dbsync.status.reply.#"]  # the broker sends each answer as central's user
    assert {"send", "consume", "createDurableQueue"} <= {t for t, r in replies.items() if "dbsync-receiver" in r}


def test_sites_send_and_only_central_reads_and_each_site_reads_only_its_own_queues() -> None:
    security = _security(FILE.read_text())
    for address in ("openmrs.sync", "openmrs.sync.control"):
        perms = security[address]
        assert "dbsync-sender" in perms["send"] and "dbsync-sender" not in perms["consume"]
        assert "dbsync-receiver" in perms["consume"]
    for queue in ("reply", "request"):
        perms = security[f"openmrs.sync.{queue}.site1"]
        assert perms["consume"] == {"amq", "dbsync-site-site1"}
        assert perms["send"] == {"amq", "dbsync-receiver"}


def test_wildcards_are_where_artemis_allows_them_and_every_message_names_its_sender() -> None:
    text = FILE.read_text()
    for match in re.findall(r'match="([^"]+)"', text):
        assert "#" not in match[:-1], match  # AMQ229071: # can only be at end of match
    core = ET.fromstring(text).find("c:core", NS)
    assert core is not None and core.findtext("c:populate-validated-user", namespaces=NS) == "true"
    (default,) = [s for s in core.iterfind("c:address-settings/c:address-setting", NS) if s.get("match") == "#"]
    assert default.findtext("c:dead-letter-address", namespaces=NS) == "DLA"
    assert default.findtext("c:auto-create-dead-letter-resources", namespaces=NS) == "true"
    assert default.findtext("c:expiry-address", namespaces=NS) == "ExpiryQueue"
    assert default.findtext("c:auto-create-expiry-resources", namespaces=NS) == "true"


def test_rendering_copies_the_sections_as_the_docs_tell_an_operator() -> None:
    text = broker_config.render(FILE.read_text(), destinations=["demo.sync", "test.trust.*"],
                                sites=["site1", "site7", "site10"], acceptors="<acceptors>\n</acceptors>")
    security = _security(text)
    for destination in ("demo.sync", "test.trust.*"):
        for site in ("site1", "site7", "site10"):
            assert security[f"{destination}.reply.{site}"]["consume"] == {"amq", f"dbsync-site-{site}"}
    assert not any(m.startswith("openmrs.sync") for m in security)
    assert "<acceptor " not in text


def test_the_docs_include_the_file_rather_than_retyping_it() -> None:
    docs = (ROOT / "docs" / "installation.md").read_text()
    assert "examples/artemis/broker.xml" in docs
    for page in ("installation.md", "operations.md", "troubleshooting.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "<security-setting" not in text and "<address-setting" not in text, page
