"""The console's archive pages: the search (by row uuid, patient, site, table, outcome, time) and one archive row
with the message as it came and every outcome it had. Read-only: any logged-in user may look."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dbsync_cli.console.data import Console
from dbsync_cli.receiver import archive_query
from dbsync_cli.receiver.state import StateError

Handler = Callable[[Request], Awaitable[Response]]
FIELDS = ("uuid", "patient", "site", "table", "outcome", "since", "until")


def archive_routes(console: Console, render: Callable[..., Response], page: Callable[..., Handler]) -> list[Route]:
    async def search(request: Request) -> Response:
        asked = {k: (request.query_params.get(k) or "").strip() or None for k in FIELDS}
        rows: list[dict[str, Any]] = []
        if any(asked.values()):
            try:
                filters = archive_query.Filters(
                    uuid=asked["uuid"], patient=asked["patient"], site=asked["site"], table=asked["table"],
                    outcome=asked["outcome"],
                    since=archive_query.parse_when(asked["since"]) if asked["since"] else None,
                    until=archive_query.parse_when(asked["until"]) if asked["until"] else None)
                rows = await run_in_threadpool(console.archive, filters)
            except StateError as exc:
                request.session["flash"] = str(exc)
        return render(request, "archive.html", asked=asked, rows=rows, outcomes=archive_query.OUTCOMES,
                      searched=any(asked.values()))

    async def entry(request: Request) -> Response:
        try:
            found = await run_in_threadpool(console.archive_entry, int(request.path_params["number"]))
        except StateError as exc:
            return render(request, "message.html", 404, text=str(exc))
        shown = found["message"]
        text = shown if isinstance(shown, str) or shown is None else orjson.dumps(
            shown, option=orjson.OPT_INDENT_2).decode()
        return render(request, "archive_entry.html", entry=found, message=text)

    return [Route("/archive", page(search)), Route("/archive/{number:int}", page(entry))]
