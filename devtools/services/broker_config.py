"""examples/artemis/broker.xml, made into the test broker's etc/broker.xml by the steps docs/installation.md gives an
operator, and nothing else: the ``<acceptors>`` block replaced by this machine's, each ``dbsync:destination``
section copied once per sync destination and each ``dbsync:site`` section once per site.

So the file the docs give is the file the demo and every service test run with: a permission it lacks fails a test.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from devtools.services.common import ServiceError, repo_root

#: the file operators install; its own destination and site are the names the sections are written with
EXAMPLE = Path("examples") / "artemis" / "broker.xml"
EXAMPLE_DESTINATION = "openmrs.sync"
EXAMPLE_SITE = "site1"

_DESTINATION = re.compile(r"([ \t]*)<!-- dbsync:destination (\S+) -->\n(.*?)[ \t]*<!-- /dbsync:destination -->\n",
                          re.S)
_SITE = re.compile(r"([ \t]*)<!-- dbsync:site (\S+) -->\n(.*?)[ \t]*<!-- /dbsync:site -->\n", re.S)
_ACCEPTORS = re.compile(r"<acceptors>\s*<acceptor .*?</acceptors>", re.S)


def example_text() -> str:
    return (repo_root() / EXAMPLE).read_text()


def render(text: str, *, destinations: Sequence[str], sites: Sequence[str], acceptors: str | None = None,
           name: str | None = None) -> str:
    """The broker.xml for these sync destinations and sites (each section copied, its names replaced)."""
    if not destinations or not sites:
        raise ServiceError("broker config: at least one destination and one site")

    def sites_of(section: str) -> str:
        def copies(m: re.Match[str]) -> str:
            indent, site, body = m.group(1), m.group(2), m.group(3)
            return "".join(f"{indent}<!-- site {s} -->\n" + _replace_word(body, site, s) for s in sites)
        return _SITE.sub(copies, section)

    def destination_copies(m: re.Match[str]) -> str:
        indent, example, body = m.group(1), m.group(2), m.group(3)
        out = []
        for destination in destinations:
            copy = sites_of(body) if "dbsync:site" in body else body
            out.append(f"{indent}<!-- destination {destination} -->\n" + copy.replace(example, destination))
        return "".join(out)

    text, n = _DESTINATION.subn(destination_copies, text)
    if n == 0:
        raise ServiceError(f"broker config: no dbsync:destination section in {EXAMPLE}")
    text = _SITE.sub(lambda m: sites_of(m.group(0)), text)  # site sections outside any destination section
    if acceptors is not None:
        text, n = _ACCEPTORS.subn(lambda _m: acceptors, text, count=1)
        if n != 1:
            raise ServiceError(f"broker config: no <acceptors> block in {EXAMPLE}")
    if name is not None:
        text = re.sub(r"<name>[^<]*</name>", lambda _m: f"<name>{name}</name>", text, count=1)
    return text


def _replace_word(text: str, word: str, by: str) -> str:
    """`word` as a whole name (site1 but not site10) replaced by `by`."""
    return re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", lambda _m: by, text)


def roles(admin: str, central: str, sites: Sequence[str]) -> str:
    """etc/artemis-roles.properties for the roles the file grants: amq, dbsync-receiver, dbsync-sender and one
    dbsync-site-<site> per site."""
    return (f"amq = {admin}\ndbsync-receiver = {central}\ndbsync-sender = {','.join(sites)}\n"
            + "".join(f"dbsync-site-{site} = {site}\n" for site in sites))


__all__ = ["EXAMPLE", "EXAMPLE_DESTINATION", "EXAMPLE_SITE", "example_text", "render", "roles"]
