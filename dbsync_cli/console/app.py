"""The console's web application (Starlette + Jinja2, served by uvicorn): server-rendered pages without a
JavaScript build step, the same data as JSON under /api/…, and /metrics for Prometheus.

Security: every page and every /api route wants a login (the users file holds argon2 hashes only); the session
is a signed, HttpOnly, SameSite=strict cookie (Secure under TLS) that names its user's session epoch, checked
against the users file on every request (logout, a new password or removing the user ends every session at
once); every POST, the login form's included, must carry the session's CSRF token; failed logins are limited per
client address (the TCP peer; X-Forwarded-For only from `console.trusted_proxies`); /metrics wants a bearer
token unless `console.metrics_open`; the read-only role sees, only the operator role acts, and every action goes
to the audit log.
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from dbsync_cli.config import Config
from dbsync_cli.console import i18n
from dbsync_cli.console.archive_pages import archive_routes
from dbsync_cli.console.data import Console, SenderConsole
from dbsync_cli.console.users import User, authenticate, current_user, end_sessions
from dbsync_cli.i18n import _
from dbsync_cli.receiver import actions, selection
from dbsync_cli.receiver import bulk as bulk_actions
from dbsync_cli.receiver.selection import Selection, SelectionError

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
LOGIN_FAILURES = 5  # per client address and minute, then 429
Handler = Callable[[Request], Awaitable[Response]]


class LoginLimiter:
    def __init__(self, limit: int = LOGIN_FAILURES, window: float = 60) -> None:
        self.limit, self.window = limit, window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, address: str) -> bool:
        times = self.failures[address]
        while times and times[0] < time.monotonic() - self.window:
            times.popleft()
        return len(times) >= self.limit

    def failed(self, address: str) -> None:
        self.failures[address].append(time.monotonic())


def create_app(cfg: Config, users_file: Path, secret_key: str, *, https: bool = False) -> Starlette:
    """The receiver's console, or with a sender config the site's page (checkpoint, lag, retention, snapshot)."""
    console = Console(cfg) if cfg.role == "receiver" else None
    sender = SenderConsole(cfg) if cfg.role == "sender" else None
    audit = console.login_audit if console is not None else (lambda user, ok, address: None)
    limiter = LoginLimiter()
    metrics_token = _metrics_token(cfg)
    peer_of = _peer_resolver(cfg.get("console.trusted_proxies") or [])

    def user_of(request: Request) -> User | None:
        """The session's user while the users file still has it with the session's epoch (else the session is
        over: cleared, so the browser gets an empty cookie back)."""
        if "dbsync.user" in request.scope:  # checked once per request
            return request.scope["dbsync.user"]
        found, user = request.session.get("user"), None
        if isinstance(found, dict):
            user = current_user(users_file, str(found.get("name") or ""), str(found.get("epoch") or ""))
            if user is None:
                request.session.clear()
        request.scope["dbsync.user"] = user
        return user

    def lang_of(request: Request) -> str:
        return i18n.choose(request.cookies.get("lang"), request.headers.get("accept-language"))

    def render(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        lang = lang_of(request)
        translations = i18n.gettext_for(lang)
        if "csrf" not in request.session:
            request.session["csrf"] = secrets.token_urlsafe(32)
        return TEMPLATES.TemplateResponse(request, name, {
            "_": translations.gettext, "lang": lang, "user": user_of(request), "csrf": request.session["csrf"],
            "flash": request.session.pop("flash", None), "role": cfg.role, **context}, status_code=status_code)

    def page(handler: Handler, *, act: bool = False) -> Handler:
        """Login required; a POST needs the session's CSRF token and the operator role."""
        async def guarded(request: Request) -> Response:
            user = user_of(request)
            if user is None:
                if request.url.path.startswith("/api/"):
                    return JSONResponse({"error": "login required"}, status_code=401)
                return RedirectResponse("/login", status_code=303)
            if request.method == "POST":
                form = await request.form()
                if not _csrf_ok(request, str(form.get("csrf") or "")):
                    return PlainTextResponse("CSRF token missing or wrong", status_code=403)
                if act and not user.may_act:
                    return PlainTextResponse("the read-only role may not do this", status_code=403)
            return await handler(request)
        return guarded

    # ---- login -------------------------------------------------------------------------------------------
    async def login_form(request: Request) -> Response:
        return render(request, "login.html")

    async def login(request: Request) -> Response:
        address = peer_of(request)
        if limiter.blocked(address):
            return render(request, "login.html", 429, error="too_many")
        form = await request.form()
        name, password = str(form.get("user") or ""), str(form.get("password") or "")
        if not _csrf_ok(request, str(form.get("csrf") or "")):  # the login form's own token (login CSRF)
            return PlainTextResponse("CSRF token missing or wrong", status_code=403)
        user = await run_in_threadpool(authenticate, users_file, name, password)
        await run_in_threadpool(audit, name[:64] or "?", user is not None, address)
        if user is None:
            limiter.failed(address)
            return render(request, "login.html", 401, error="wrong")
        request.session.clear()
        request.session.update({"user": {"name": user.name, "epoch": user.epoch},
                                "csrf": secrets.token_urlsafe(32)})
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        """Ends every session of the user (other browsers, a copied cookie), not only this one."""
        user = user_of(request)
        if user is not None:
            await run_in_threadpool(end_sessions, users_file, user.name)
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    async def language(request: Request) -> Response:
        code = request.path_params["code"]
        back = request.headers.get("referer") or "/"
        response = RedirectResponse(back if back.startswith(str(request.base_url)) else "/", status_code=303)
        if code in i18n.LOCALES:
            response.set_cookie("lang", code, max_age=365 * 86400, httponly=True, samesite="strict", secure=https)
        return response

    # ---- pages -------------------------------------------------------------------------------------------
    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", page(logout), methods=["POST"]),
        Route("/lang/{code}", language, methods=["GET"]),
    ]
    if sender is not None:
        routes += _sender_routes(sender, render, page, metrics_token)
    if console is not None:
        routes += _receiver_routes(console, render, page, user_of, lang_of, metrics_token)
        routes += archive_routes(console, render, page)
    middleware = [Middleware(SessionMiddleware, secret_key=secret_key, session_cookie="dbsync_console",
                             max_age=cfg["console.session_hours"] * 3600, same_site="strict", https_only=https),
                  Middleware(UserLanguage)]
    return Starlette(routes=routes, middleware=middleware)


class UserLanguage:
    """Each page request runs in its user's language (the switch, else the browser's), so what the library says
    back (a conflict resolved, an error, a status problem) reads like the page around it; /api/… and /metrics are
    for programs and stay English."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        machine = request.url.path.startswith(("/api/", "/metrics"))  # what programs read stays English
        token = i18n.use("en" if machine else i18n.choose(request.cookies.get("lang"),
                                                          request.headers.get("accept-language")))
        try:
            await self.app(scope, receive, send)
        finally:
            i18n.reset(token)


def _csrf_ok(request: Request, token: str) -> bool:
    """The form's token equals the session's; an empty one never matches (a session without a token yet)."""
    expected = str(request.session.get("csrf") or "")
    return bool(token and expected) and _same(token, expected)


def _same(given: str, expected: str) -> bool:
    """Constant-time equality of two texts as UTF-8 bytes: compare_digest refuses a non-ASCII str (TypeError, a 500),
    and whatever a client sends must be a plain no."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


def _metrics_token(cfg: Config) -> str | None:
    """The bearer token /metrics wants: None when `console.metrics_open = true` (open), "" when no token is set
    (then /metrics is closed: a default that needs no token would show every site's name to anyone)."""
    if cfg.get("console.metrics_open"):
        return None
    return str(cfg.get("console.metrics_token") or "")


def _selection(queue: str, params: Any) -> tuple[Selection, str | None]:
    """The filters of a list page's form (query or POST); an unusable one is named, and no filter applied."""
    def value(name: str) -> str | None:
        return str(params.get(name) or "").strip() or None
    try:
        age = value("older_than")
        return Selection(queue, site=value("site"), table=value("table"), reason=value("reason"),
                         kind=value("kind"), older_than=selection.parse_age(age) if age else None), None
    except SelectionError as exc:
        return Selection(queue), str(exc)


def _bearer_ok(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    return bool(token) and _same(request.headers.get("authorization", ""), f"Bearer {token}")


def _metrics_refused(token: str | None) -> Response:
    text = ("bearer token required" if token else
            "/metrics is closed: set console.metrics_token (or console.metrics_open = true)")
    return PlainTextResponse(text, status_code=401, headers={"WWW-Authenticate": 'Bearer realm="dbsync"'})


def _peer_resolver(trusted: list[str]) -> Callable[[Request], str]:
    """The client's address for the login limit and the audit log: the TCP peer, and only when that peer is one
    of `console.trusted_proxies` the nearest X-Forwarded-For address that is not a trusted proxy itself (a client
    can write any X-Forwarded-For it likes; only the proxy's own addition can be believed)."""
    networks = [ipaddress.ip_network(item, strict=False) for item in trusted]

    def is_trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in networks)

    def peer_of(request: Request) -> str:
        address = request.client.host if request.client else "?"
        if not is_trusted(address):
            return address
        hops = [h.strip() for h in ",".join(request.headers.getlist("x-forwarded-for")).split(",") if h.strip()]
        for hop in reversed(hops):
            if not is_trusted(hop):
                return hop
            address = hop
        return address

    return peer_of


def _sender_routes(sender: SenderConsole, render: Callable[..., Response], page: Callable[..., Handler],
                   metrics_token: str | None) -> list[Route]:
    async def overview(request: Request) -> Response:
        return render(request, "sender.html", report=await run_in_threadpool(sender.status))

    async def metrics(request: Request) -> Response:
        if not _bearer_ok(request, metrics_token):
            return _metrics_refused(metrics_token)
        report = await run_in_threadpool(sender.status)
        return Response(generate_latest(_sender_registry(report)), media_type=CONTENT_TYPE_LATEST)

    async def status(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(sender.status), headers={"Cache-Control": "no-store"})

    return [Route("/", page(overview)), Route("/api/status", page(status)), Route("/metrics", metrics)]


def _receiver_routes(console: Console, render: Callable[..., Response], page: Callable[..., Handler],
                     user_of: Callable[[Request], User | None], lang_of: Callable[[Request], str],
                     metrics_token: str | None) -> list[Route]:
    async def overview(request: Request) -> Response:
        return render(request, "overview.html", report=await run_in_threadpool(console.status))

    async def site_page(request: Request) -> Response:
        report = await run_in_threadpool(console.status)
        found = [s for s in report["sites"] if s["identifier"] == request.path_params["site"]]
        if not found:
            return render(request, "message.html", 404, text="unknown site")
        label = i18n.gettext_for(lang_of(request)).gettext
        drawn = await run_in_threadpool(console.charts, found[0]["identifier"], label)
        return render(request, "site.html", site=found[0], report=report, charts=drawn)

    async def samples(request: Request) -> Response:
        days = min(31, max(1, int(request.query_params.get("days") or 1)))
        found = await run_in_threadpool(console.samples, request.path_params["site"], days)
        return JSONResponse(found, headers={"Cache-Control": "no-store"})

    async def conflict_json(request: Request) -> Response:
        try:
            conflict, rows = await run_in_threadpool(console.conflict, int(request.path_params["number"]))
        except Exception as exc:  # noqa: BLE001 - a conflict that does not exist
            return JSONResponse({"error": str(exc)}, status_code=404)
        return JSONResponse({**conflict, "columns": rows}, headers={"Cache-Control": "no-store"})

    async def rest_page(request: Request) -> Response:
        return render(request, "rest.html", rest=await run_in_threadpool(console.rest_calls))

    async def retry_page(request: Request) -> Response:
        chosen, error = _selection("retry", request.query_params)
        if error:
            request.session["flash"] = error
        total, _pinned = await run_in_threadpool(console.count, chosen)
        entries = await run_in_threadpool(console.retry_entries, chosen)
        shown = next((e for e in entries if str(e["id"]) == request.query_params.get("history")), None)
        history = None if shown is None else await run_in_threadpool(functools.partial(
            console.history, uuid=(shown["entity"] or "").partition(":")[2] or None, message_id=shown["message_id"]))
        return render(request, "retry.html", entries=entries, total=total, chosen=chosen,
                      kinds=selection.RETRY_KINDS, requests=await run_in_threadpool(console.requests),
                      history_of=shown, history=history)

    async def retry_action(request: Request) -> Response:
        number, action = int(request.path_params["number"]), request.path_params["action"]
        user = user_of(request)
        assert user is not None
        try:
            call = console.retry_again if action == "again" else console.retry_drop
            request.session["flash"] = await run_in_threadpool(call, user.name, number)
        except Exception as exc:  # noqa: BLE001 - one line for the operator, on the page
            request.session["flash"] = f"{type(exc).__name__}: {exc}"
        return RedirectResponse("/retry", status_code=303)

    async def bulk(request: Request) -> Response:
        """A bulk action from a list's filter form: first the count and a confirm step, then (confirmed, with the
        highest id counted) the request is queued and the list shows its progress."""
        queue = "retry" if request.url.path.startswith("/retry") else "conflicts"
        form = await request.form()
        action, mode = str(form.get("action") or ""), str(form.get("mode") or "") or None
        back = f"/{queue}"
        chosen, error = _selection(queue, form)
        wanted = {"retry": ("again", "drop"), "conflicts": ("resolve",)}[queue]
        if error or action not in wanted or (queue == "conflicts" and mode not in bulk_actions.MODES):
            request.session["flash"] = error or _("choose an action")
            return RedirectResponse(back, status_code=303)
        if not chosen.filtered:
            request.session["flash"] = _("choose at least one filter for a bulk action")
            return RedirectResponse(back, status_code=303)
        name = {"again": "retry_again_many", "drop": "retry_drop_many", "resolve": "resolve_many"}[action]
        user = user_of(request)
        assert user is not None
        if str(form.get("confirmed") or "") != "1":
            total, pinned = await run_in_threadpool(console.count, chosen)
            return render(request, "confirm.html", queue=queue, action=action, mode=mode, total=total,
                          chosen=pinned, older_than_text=str(form.get("older_than") or ""),
                          what=actions.describe(name, {"selection": pinned.args(), "mode": mode}))
        try:
            upto = int(str(form.get("upto") or ""))
        except ValueError:
            request.session["flash"] = _("the confirmation lost its count: choose again")
            return RedirectResponse(back, status_code=303)
        request.session["flash"] = await run_in_threadpool(console.bulk, user.name, name,
                                                           replace(chosen, upto=upto), mode)
        return RedirectResponse(back, status_code=303)

    async def requests_json(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(console.requests), headers={"Cache-Control": "no-store"})

    async def conflicts_page(request: Request) -> Response:
        chosen, error = _selection("conflicts", request.query_params)
        if error:
            request.session["flash"] = error
        total, _pinned = await run_in_threadpool(console.count, chosen)
        return render(request, "conflicts.html", conflicts=await run_in_threadpool(console.conflicts, chosen),
                      total=total, chosen=chosen, kinds=tuple(selection.CONFLICT_KINDS),
                      modes=bulk_actions.MODES, requests=await run_in_threadpool(console.requests))

    async def conflict_page(request: Request) -> Response:
        try:
            conflict, rows = await run_in_threadpool(console.conflict, int(request.path_params["number"]))
        except Exception as exc:  # noqa: BLE001 - a conflict that does not exist, or its rows cannot be read
            return render(request, "message.html", 404, text=str(exc))
        history = await run_in_threadpool(functools.partial(console.history, uuid=conflict["uuid"]))
        return render(request, "conflict.html", conflict=conflict, rows=rows, history=history)

    async def conflict_resolve(request: Request) -> Response:
        number = int(request.path_params["number"])
        form = await request.form()
        mode = str(form.get("mode") or "")
        columns = [str(c) for c in form.getlist("column")] if mode == "merge" else None
        user = user_of(request)
        assert user is not None
        try:
            if mode == "merge" and not columns:
                raise ValueError("merge: choose at least one column")
            request.session["flash"] = await run_in_threadpool(console.resolve, user.name, number, mode, columns)
        except Exception as exc:  # noqa: BLE001 - one line for the operator, on the page
            request.session["flash"] = f"{exc}"
            return RedirectResponse(f"/conflicts/{number}", status_code=303)
        return RedirectResponse("/conflicts", status_code=303)

    async def verify_page(request: Request) -> Response:
        return render(request, "verify.html", runs=await run_in_threadpool(console.verify_runs))

    async def audit_page(request: Request) -> Response:
        return render(request, "audit.html", entries=await run_in_threadpool(console.audit))

    # ---- JSON and metrics --------------------------------------------------------------------------------
    def api(fetch: Callable[[], Any]) -> Handler:
        async def handler(request: Request) -> Response:
            return JSONResponse(await run_in_threadpool(fetch), headers={"Cache-Control": "no-store"})
        return handler

    async def metrics(request: Request) -> Response:
        if not _bearer_ok(request, metrics_token):
            return _metrics_refused(metrics_token)
        report = await run_in_threadpool(console.status)
        return Response(generate_latest(_registry(report)), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/", page(overview)),
        Route("/sites/{site}", page(site_page)),
        Route("/retry", page(retry_page)),
        Route("/retry/bulk", page(bulk, act=True), methods=["POST"]),
        Route("/retry/{number:int}/{action:str}", page(retry_action, act=True), methods=["POST"]),
        Route("/conflicts", page(conflicts_page)),
        Route("/conflicts/bulk", page(bulk, act=True), methods=["POST"]),
        Route("/api/requests", page(requests_json)),
        Route("/conflicts/{number:int}", page(conflict_page)),
        Route("/conflicts/{number:int}/resolve", page(conflict_resolve, act=True), methods=["POST"]),
        Route("/verify", page(verify_page)),
        Route("/audit", page(audit_page)),
        Route("/rest", page(rest_page)),
        Route("/api/rest", page(api(console.rest_calls))),
        Route("/api/sites/{site}/samples", page(samples)),
        Route("/api/conflicts/{number:int}", page(conflict_json)),
        Route("/api/status", page(api(console.status))),
        Route("/api/retry", page(api(console.retry_entries))),
        Route("/api/conflicts", page(api(console.conflicts))),
        Route("/api/verify", page(api(console.verify_runs))),
        Route("/api/audit", page(api(console.audit))),
        Route("/metrics", metrics),
    ]


def _registry(report: dict[str, Any]) -> CollectorRegistry:
    """Per-site lag and queue sizes in the Prometheus text format."""
    registry = CollectorRegistry()
    lag = Gauge("dbsync_site_silent_seconds", "Seconds since the site's last applied message", ["site"],
                registry=registry)
    messages = Gauge("dbsync_site_messages", "Messages applied for the site", ["site"], registry=registry)
    retry = Gauge("dbsync_retry_queue_entries", "Entries in the retry queue", ["site"], registry=registry)
    skipped = Gauge("dbsync_site_not_applied", "Messages not applied, by reason", ["site", "reason"],
                    registry=registry)
    for site in report.get("sites", []):
        if site.get("silent_seconds") is not None:
            lag.labels(site["identifier"]).set(site["silent_seconds"])
        messages.labels(site["identifier"]).set(site.get("messages") or 0)
        for reason, count in (site.get("skipped") or {}).items():
            skipped.labels(site["identifier"], reason).set(count)
    for site, count in ((report.get("retry_queue") or {}).get("by_site") or {}).items():
        retry.labels(site).set(count)
    for name, key, text in (("inbox", "size", "Messages in the inbox not applied yet"),
                            ("conflicts", "unresolved", "Unresolved conflicts")):
        gauge = Gauge(f"dbsync_{name}", text, registry=registry)
        if report.get(name):
            gauge.set(report[name][key] or 0)
    dead = Gauge("dbsync_broker_dead_letters", "Messages of the consumed destination in its dead-letter "
                 "(dead_letter) and expiry (expiry) queues: never applied", ["queue"], registry=registry)
    for kind, count in ((report.get("broker") or {}).get("dead_letters") or {}).items():
        dead.labels(kind).set(count)
    state = Gauge("dbsync_receiver_state", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", registry=registry)
    state.set({"OK": 0, "WARNING": 1, "CRITICAL": 2}.get(str(report.get("state")), 3))
    return registry


def _sender_registry(report: dict[str, Any]) -> CollectorRegistry:
    """The site's lag, rate and checkpoint age in the Prometheus text format."""
    registry = CollectorRegistry()
    lag, checkpoint, rate = report.get("lag") or {}, report.get("checkpoint") or {}, report.get("rate") or {}
    for name, value, text in (
            ("dbsync_sender_lag_bytes", lag.get("bytes"), "Binlog bytes not confirmed by the broker yet"),
            ("dbsync_sender_lag_seconds", lag.get("seconds"), "Seconds the sender is behind the binlog's end"),
            ("dbsync_sender_checkpoint_age_seconds", checkpoint.get("age_seconds"), "Seconds since the checkpoint moved"),
            ("dbsync_sender_rows_per_second", rate.get("rows_per_second"), "Rows confirmed per second (1 min)")):
        gauge = Gauge(name, text, registry=registry)
        if isinstance(value, int | float):
            gauge.set(value)
    state = Gauge("dbsync_sender_state", "0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", registry=registry)
    state.set({"OK": 0, "WARNING": 1, "CRITICAL": 2}.get(str(report.get("state")), 3))
    registry.register(_SenderDropped(report.get("dropped") or {}))
    return registry


class _SenderDropped(Collector):
    """`dbsync_sender_dropped_total{reason}`: a counter kept in the sender's state (it survives restarts), so no
    `_created` sample of this process's own."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("dbsync_sender_dropped", "Changes the sender read and did not send, by reason "
                                     "(see dbsync status)", labels=["reason"])
        for reason, count in self.counts.items():
            family.add_metric([reason], count)
        yield family
