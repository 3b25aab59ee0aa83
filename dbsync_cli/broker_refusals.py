"""What an Artemis ERROR frame for a SEND means, in one line: the cause named, not a 600-character `CoreMessage[…]`.

Measured with Artemis 2.40 over STOMP (tests/service/test_fault_matrix.py): a user without `send` on an existing
address gets a bare ``AMQ339011 Error sending message CoreMessage[…]`` (the AMQ229032 behind it is only in the
broker's log); without `createAddress` on a new one ``AMQ229032 … permission='CREATE_ADDRESS'``; an address that
does not exist while auto-create is off ``AMQ339001 Destination does not exist``; a broker past `max-disk-usage`
``AMQ229119: Free storage space is at …`` and then no answer at all (it blocks producers). The first three need an
operator (broker.xml or the destination key); a full disk passes when space is freed, so it is retried.

A SUBSCRIBE (consume, the receiver) is refused the same ways: without `consume` on an existing queue a bare
``AMQ339016 Error creating subscription`` (the reason again only in the broker's log), without `createAddress` on a
new address AMQ229032, an unknown address AMQ339001; the broker then closes the connection.
"""

from __future__ import annotations

import re

from dbsync_cli import exitcodes
from dbsync_cli.broker import BrokerError

_PERMISSION = re.compile(r"AMQ229032:? User:? (\S+) does not have permission='(\w+)' on address (\S+)")
_DUMP = re.compile(r"\s*CoreMessage\[.*", re.S)


class BrokerRefused(BrokerError):
    """The broker refused a message; `permanent` when only an operator can fix it (then `code` is the exit code)."""

    def __init__(self, message: str, *, permanent: bool, code: int = exitcodes.UNREACHABLE, kind: str = "",
                 bare: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code
        self.kind = kind
        #: read from a bare AMQ339011, which a full disk sometimes gives too: ask again (second_opinion) first
        self.bare = bare


def refusal(error: str, destination: str, what: str = "the batch", previous: str = "") -> BrokerRefused:
    """The ERROR frame's `message` header (and body) as one line naming the cause; `what` the broker refused
    (the batch, the subscription); `previous` the kind of the refusal before it on this publisher (after a full
    disk, Artemis answers the batch sent again with a bare AMQ339011: measured, the disk still full)."""
    text = " ".join(error.split())
    found = _PERMISSION.search(text)
    if found:
        user, permission, address = found.groups()
        return BrokerRefused(
            f"broker refused {what}: user {user} has no {permission.lower()} permission on address {address} "
            "(AMQ229032; grant it in broker.xml's security-settings)",
            permanent=True, code=exitcodes.PRIVILEGES, kind="permission")
    if "AMQ339001" in text:
        return BrokerRefused(
            f"broker refused {what}: address {destination} does not exist and the broker does not create it "
            "(AMQ339001; auto-create-addresses is off): create it on the broker or correct broker.destination",
            permanent=True, code=exitcodes.CONFIG, kind="unknown_address")
    if "AMQ229119" in text:
        return BrokerRefused(
            f"broker refused {what}: its disk is full ({_DUMP.sub('', text)}); it blocks every producer until "
            "space is freed on the broker: retrying", permanent=False, kind="disk_full")
    if "AMQ229102" in text:
        return BrokerRefused(
            f"broker refused {what}: address {destination} is full (AMQ229102, address-full-policy FAIL): "
            "retrying", permanent=False, kind="address_full")
    if "AMQ339011" in text and previous == "disk_full":
        return BrokerRefused(
            f"broker refused {what}: its disk is still full (AMQ339011 after AMQ229119); it blocks every producer "
            "until space is freed on the broker: retrying", permanent=False, kind="disk_full")
    if "AMQ339011" in text:  # the broker hides its reason; with the shipped broker.xml it is a missing `send`
        return BrokerRefused(
            f"broker refused the batch sent to {destination} (AMQ339011): the broker user lacks send permission on "
            "it (broker.xml's security-settings; the broker's log names the user)",
            permanent=True, code=exitcodes.PRIVILEGES, kind="permission", bare=True)
    if "AMQ339016" in text:  # a SUBSCRIBE: with the shipped broker.xml a missing `consume`
        return BrokerRefused(
            f"broker refused the subscription to {destination} (AMQ339016): the broker user lacks consume permission "
            "on it (broker.xml's security-settings; the broker's log names the user)",
            permanent=True, code=exitcodes.PRIVILEGES, kind="permission")
    return BrokerRefused(f"broker refused {what}: {_DUMP.sub('', text)[:300]}", permanent=False)


def second_opinion(first: BrokerRefused, probe: str | None, destination: str) -> BrokerRefused:
    """What a bare AMQ339011 meant, from the answer to a send probe made after it (broker_access: a SEND in an
    aborted transaction; None: granted). Measured with Artemis 2.40: a broker past max-disk-usage answers 1 first
    send in 3 with a bare AMQ339011 but every probe with AMQ229119; a user without `send` gets AMQ339011 again.
    Only a probe refused for a permission makes the refusal permanent; granted or unclear answers retry."""
    if not first.bare:
        return first
    if probe is None:
        return BrokerRefused(
            f"broker refused the batch sent to {destination} (AMQ339011) but grants send on it when asked again: "
            "retrying (the broker's log has the reason)", permanent=False, kind="other")
    if "AMQ229032" in probe:  # broker_access words a named permission refusal its own way
        return first
    again = refusal(probe, destination)
    if again.kind == "permission":
        return first
    if again.kind:
        return again
    return BrokerRefused(f"broker refused the batch sent to {destination} (AMQ339011); asked again it answered "
                         f"{again.args[0].split(': ', 1)[-1]}: retrying", permanent=False, kind="other")


__all__ = ["BrokerRefused", "refusal", "second_opinion"]
