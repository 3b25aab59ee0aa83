"""`config check`: the broker permissions the role needs on every address it uses, tried for real.

A sender sends rows to the sync destination and requests to its `.control` queue, and reads central's answers
(`.reply.<site>`) and requests (`.request.<site>`); a receiver reads the sync destination and `.control`, and sends
to each registered site's reply and request queues. A missing permission is an error with the exit code the
process itself would stop with (15, like a database privilege).
"""

from __future__ import annotations

import stomp.exception

from dbsync_cli import complex_obs, control, exitcodes
from dbsync_cli.broker import BrokerError, settings_from_config
from dbsync_cli.broker_access import CONSUME, SEND, Need, refused
from dbsync_cli.config import Config
from dbsync_cli.findings import ERROR, OK, SKIPPED, Finding
from dbsync_cli.i18n import _

CHECK = "broker.permissions"


def needs(cfg: Config, sites: list[str]) -> list[Need]:
    """What the role does on the broker, one need per address and operation."""
    destination = cfg["broker.destination"]
    routing = "ANYCAST" if cfg["broker.destination_type"] == "queue" else "MULTICAST"
    requests = control.request_destination(destination)
    if cfg.role == "sender":
        site = cfg["sender.id"]
        found = [Need(SEND, destination, _("its rows"), routing), Need(SEND, requests, _("verify and catch-up requests")),
                 Need(CONSUME, control.reply_destination(destination, site), _("central's answers"))]
        if cfg["sender.requests"]:
            found.append(Need(CONSUME, control.site_request_destination(destination, site), _("re-sync requests")))
        if cfg["sender.complex_obs_dir"]:
            found.append(Need(SEND, complex_obs.destination(destination), _("complex obs files")))
        return found
    found = [Need(CONSUME, requests, _("the sites' requests"))]
    if cfg["receiver.complex_obs_dir"]:
        found.append(Need(CONSUME, complex_obs.destination(destination), _("the sites' complex obs files")))
    if routing == "ANYCAST":  # a topic's durable subscription queue is the receiver's own: not probed
        found.insert(0, Need(CONSUME, destination, _("the sites' rows")))
    for site in sites:
        found += [Need(SEND, control.reply_destination(destination, site), _("answers to {site}").format(site=site)),
                  Need(SEND, control.site_request_destination(destination, site),
                       _("re-sync requests to {site}").format(site=site))]
    return found


def permissions(cfg: Config, sites: list[str]) -> list[Finding]:
    """One finding per refused permission, or one ok finding naming what was tried (a receiver's: also on the
    reply and request queues of `sites`)."""
    wanted = needs(cfg, sites)
    try:
        refusals = refused(wanted, settings_from_config(cfg))
    except (BrokerError, OSError, stomp.exception.StompException) as exc:
        return [Finding(CHECK, SKIPPED, _("not checked: {error}").format(error=" ".join(str(exc).split())))]
    if not refusals:
        sends = sorted({n.address for n in wanted if n.operation == SEND})
        reads = sorted({n.address for n in wanted if n.operation == CONSUME})
        return [Finding(CHECK, OK, _("{user} may send to {sends} and consume from {reads}").format(
            user=cfg["broker.user"], sends=", ".join(sends) or "-", reads=", ".join(reads) or "-"))]
    return [Finding(CHECK, ERROR, _refusal(cfg["broker.user"], need, reason), exitcodes.PRIVILEGES)
            for need, reason in refusals]


def _refusal(user: str, need: Need, reason: str) -> str:
    text = _("{user} may not send to {address!r} ({why}): {reason}; grant it in broker.xml's security-settings") \
        if need.operation == SEND else \
        _("{user} may not consume from {address!r} ({why}): {reason}; grant it in broker.xml's security-settings")
    return text.format(user=user, address=need.address, why=need.why, reason=reason)
