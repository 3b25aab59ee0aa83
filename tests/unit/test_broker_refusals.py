"""Issue 26 item 10: Artemis's ERROR frames for a SEND, as measured over STOMP with Artemis 2.40 (the texts below are
copied from real frames), named in one line; permanent ones carry an operator-fault exit code. The service test
tests/service/test_fault_matrix.py::test_a_broker_refusal_is_named_in_one_line reproduces the permanent ones
with the real broker; a full disk needs a broker of its own (max-disk-usage), so its text is checked here."""

from __future__ import annotations

import pytest

from dbsync_cli import exitcodes
from dbsync_cli.broker_refusals import refusal, second_opinion

NO_SEND = ("AMQ339011 Error sending message CoreMessage[messageID=82, durable=true, userID=null, priority=4, "
           "timestamp=Sun Dec 06 230626 UTC 2026, expiration=0, durable=true, address=test.fault.zzz, size=297, "
           "properties=TypedProperties[destination=test.fault.zzz, content-length=7, _AMQ_ROUTING_TYPE=1, "
           "receipt=r1, destination-type=ANYCAST]]@1475265351")
NO_CREATE = ("AMQ229032 User site1 does not have permission='CREATE_ADDRESS' on address test.fault.zzz: "
             "AMQ229032: User: site1 does not have permission='CREATE_ADDRESS' on address test.fault.zzz")
UNKNOWN = "AMQ339001 Destination does not exist test.h3noauto.a"
DISK_FULL = ("AMQ229119: Free storage space is at 54.6GB of 270.6GB total. Usage rate is 79.8% which is beyond the "
             "configured <max-disk-usage>. System will start blocking producers.")


@pytest.mark.parametrize(("text", "permanent", "code", "words"), [
    (NO_SEND, True, exitcodes.PRIVILEGES, "lacks send permission"),
    (NO_CREATE, True, exitcodes.PRIVILEGES, "user site1 has no create_address permission on address test.fault.zzz"),
    (UNKNOWN, True, exitcodes.CONFIG, "does not exist"),
    (DISK_FULL, False, exitcodes.UNREACHABLE, "its disk is full"),
], ids=["no send", "no create", "unknown address", "disk full"])
def test_each_refusal_is_named(text: str, permanent: bool, code: int, words: str) -> None:
    named = refusal(text, "test.fault.zzz")
    line = str(named)
    assert named.permanent is permanent and named.code == code
    assert words in line, line
    assert "CoreMessage" not in line and "\n" not in line and len(line) < 400, line


def test_an_unknown_refusal_keeps_the_brokers_words_without_the_dump() -> None:
    named = refusal("AMQ999999 something new CoreMessage[messageID=1, …]", "d")
    assert not named.permanent
    assert str(named) == "broker refused the batch: AMQ999999 something new"


def test_a_refused_subscription_and_a_disk_still_full_are_named() -> None:
    """Measured over STOMP: SUBSCRIBE without `consume` gets a bare AMQ339016; after AMQ229119 the batch sent again
    gets a bare AMQ339011, the disk still full (not a permission)."""
    named = refusal("AMQ339016 Error creating subscription dbsync-consume", "q", "the subscription")
    assert named.permanent and named.code == exitcodes.PRIVILEGES and "lacks consume permission" in str(named)
    again = refusal(NO_SEND, "q", previous="disk_full")
    assert not again.permanent and again.kind == "disk_full" and "still full" in str(again)
    assert refusal(NO_SEND, "q").permanent


@pytest.mark.parametrize(("probe", "permanent", "kind", "words"), [
    ("refused (AMQ339011): no send permission", True, "permission", "lacks send permission"),
    (NO_SEND, True, "permission", "lacks send permission"),
    (DISK_FULL, False, "disk_full", "its disk is full"),
    (None, False, "other", "grants send on it when asked again: retrying"),
    ("no answer within 5s", False, "other", "asked again it answered no answer within 5s: retrying"),
    (UNKNOWN, True, "unknown_address", "does not exist"),
    ("user site1 has no send permission on address openmrs.sync (AMQ229032)", True, "permission",
     "lacks send permission"),
], ids=["probe refused", "probe refused raw", "probe disk full", "probe granted", "probe silent", "probe unknown",
        "probe named permission"])
def test_a_bare_amq339011_is_permanent_only_when_a_probe_is_refused_too(probe: str | None, permanent: bool,
                                                                        kind: str, words: str) -> None:
    """A broker past max-disk-usage answers some first sends with a bare AMQ339011 (measured 1 in 3), the frame a
    missing `send` gets: publish asks again with a probe before it stops with exit 15."""
    first = refusal(NO_SEND, "openmrs.sync")
    assert first.permanent and first.bare
    second = second_opinion(first, probe, "openmrs.sync")
    assert (second.permanent, second.kind) == (permanent, kind)
    assert words in str(second) and "CoreMessage" not in str(second) and "\n" not in str(second)


def test_a_named_refusal_needs_no_second_opinion() -> None:
    named = refusal(NO_CREATE, "openmrs.sync")
    assert not named.bare and second_opinion(named, None, "openmrs.sync") is named
