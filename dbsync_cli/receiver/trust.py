"""Who may speak for a site: the broker user it is registered with, or, for rows imported from a bundle (sync by
file), the key it signs with. Checked by apply for every message, and again for each retried one."""

from __future__ import annotations

from dbsync_cli import signing, wire
from dbsync_cli.reason_codes import Reason
from dbsync_cli.receiver import reasons, state


def refused_sender(site: state.Site, user: str | None) -> Reason | None:
    """Why a message may not speak for `site`, or None. A row imported from a bundle (`dbsync import`) is sent by
    the key that signed it: the site's recorded key, or refused (the broker user does not matter then)."""
    if user is not None and user.startswith(wire.SIGNED_USER_PREFIX):
        recorded = signed_user(site.public_key) if site.public_key else None
        if user != recorded:
            return reasons.reason("signed_mismatch", site=site.identifier, key=user.removeprefix(
                wire.SIGNED_USER_PREFIX), expected=recorded.removeprefix(wire.SIGNED_USER_PREFIX) if recorded else "-")
        return None
    if site.broker_user is None or user is None or user == site.broker_user:
        return None
    return (reasons.reason("sender_mismatch", site=site.identifier, user=user, expected=site.broker_user) if user
            else reasons.reason("sender_unstamped", site=site.identifier, expected=site.broker_user))


def stamped_user(headers: dict[str, str], signed_by: str | None = None) -> str:
    """Who a delivery was sent by: the user the broker stamped ('' when none, which `refused_sender` refuses for a
    site registered with a broker user), or the key a bundle was signed with. A broker login that looks like a
    signature is kept apart with a prefix, so no login can pass for one."""
    if signed_by:
        return signed_by
    user = headers.get(wire.VALIDATED_USER_HEADER) or ""
    return f"broker:{user}" if user.startswith(wire.SIGNED_USER_PREFIX) else user


def signed_user(public_key: str) -> str:
    """What a row imported from a bundle signed with `public_key` is stored as sent by."""
    return wire.SIGNED_USER_PREFIX + signing.fingerprint(public_key)
