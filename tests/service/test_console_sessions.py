"""Console sessions end when they should (logout, user removal, a new password), the login form wants its CSRF
token, X-Forwarded-For counts only from a configured proxy, and /metrics is closed without a token: all against a
real console process over HTTP."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import dbsync
from receiver_helpers import Central, drop_schema, make_central
from test_console import serve

pytestmark = pytest.mark.lane2
PASSWORDS = {"admin": "operator-pass-1", "viewer": "readonly-pass-1"}


class Client:
    """One browser: its own cookie jar, redirects not followed (the status and Location are what we check)."""

    def __init__(self, url: str) -> None:
        self.url, self.jar = url, http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect())

    def request(self, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, Any]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read().decode(), response.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), exc.headers

    def csrf(self, path: str = "/login") -> str:
        _status, body, _headers = self.request(path)
        found = re.search(r'name="csrf" value="([^"]+)"', body)
        assert found, body[:300]
        return found.group(1)

    def log_in(self, user: str, headers: dict[str, str] | None = None) -> int:
        form = {"user": user, "password": PASSWORDS[user], "csrf": self.csrf()}
        return self.request("/login", form, headers)[0]

    def cookie(self) -> str:
        (found,) = [c.value for c in self.jar if c.name == "dbsync_console"]
        return str(found)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def replay(url: str, cookie: str, path: str = "/api/status") -> int:
    """A request carrying a copy of an old session cookie (as an attacker who kept it would send it)."""
    req = urllib.request.Request(url + path, headers={"Cookie": f"dbsync_console={cookie}"})
    try:
        with urllib.request.build_opener(_NoRedirect()).open(req, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture
def central(openmrs_db, services, tmp_path: Path, broker_settings) -> Iterator[Central]:
    found = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1",))
    for user, role in (("admin", "operator"), ("viewer", "readonly")):
        add_user(found, user, role, PASSWORDS[user])
    try:
        yield found
    finally:
        drop_schema(found)


def add_user(central: Central, user: str, role: str, password: str) -> None:
    dbsync("console", "user", "add", user, "--role", role, "--password-stdin", "--config", str(central.config),
           env=central.env, stdin=(password + "\n").encode())


@pytest.fixture
def console(central: Central) -> Iterator[tuple[Central, str]]:
    proc, url = serve(central.config, {**central.env, "DBSYNC_CONSOLE__METRICS_TOKEN": "scrape-token-1"})
    try:
        yield central, url
    finally:
        proc.terminate()
        proc.wait(30)


def test_logout_ends_every_session_of_the_user_and_an_old_cookie_is_refused(console) -> None:
    _central, url = console
    laptop, phone, other = Client(url), Client(url), Client(url)
    assert laptop.log_in("admin") == 303 and phone.log_in("admin") == 303 and other.log_in("viewer") == 303
    kept = laptop.cookie()
    assert replay(url, kept) == 200  # a copy of the cookie works while the session lasts
    assert laptop.request("/logout", {"csrf": laptop.csrf("/")})[0] == 303
    assert replay(url, kept) == 401  # the copy kept from before the logout
    assert phone.request("/api/status")[0] == 401  # the same user's other browser
    status, _body, headers = phone.request("/retry")
    assert status == 303 and headers["location"] == "/login"
    assert other.request("/api/status")[0] == 200  # another user's session goes on
    assert laptop.log_in("admin") == 303 and laptop.request("/api/status")[0] == 200  # a new login works


def test_removing_a_user_or_changing_its_password_ends_its_sessions_at_once(console) -> None:
    central, url = console
    viewer, admin = Client(url), Client(url)
    assert viewer.log_in("viewer") == 303 and admin.log_in("admin") == 303
    kept_viewer, kept_admin = viewer.cookie(), admin.cookie()
    entry_path = "/retry"
    assert replay(url, kept_viewer, entry_path) == 200
    dbsync("console", "user", "remove", "viewer", "--config", str(central.config), env=central.env)
    assert replay(url, kept_viewer) == 401 and replay(url, kept_viewer, entry_path) == 303
    assert viewer.request("/api/status")[0] == 401
    add_user(central, "admin", "operator", "a-new-password-2")  # a password change
    assert replay(url, kept_admin) == 401 and admin.request("/api/status")[0] == 401
    PASSWORDS["admin"] = "a-new-password-2"
    try:
        fresh = Client(url)
        assert fresh.log_in("admin") == 303 and fresh.request("/api/status")[0] == 200
    finally:
        PASSWORDS["admin"] = "operator-pass-1"


def test_the_login_form_wants_its_csrf_token(console) -> None:
    _central, url = console
    fresh = Client(url)  # no session at all: an empty token must not match an empty session
    status, _body, _headers = fresh.request("/login", {"user": "admin", "password": PASSWORDS["admin"]})
    assert status == 403
    assert fresh.request("/api/status")[0] == 401
    visited = Client(url)
    visited.csrf()  # a session with a token, the form posted without it or with another
    for form in ({"user": "admin", "password": PASSWORDS["admin"]},
                 {"user": "admin", "password": PASSWORDS["admin"], "csrf": ""},
                 {"user": "admin", "password": PASSWORDS["admin"], "csrf": "forged"}):
        assert visited.request("/login", form)[0] == 403
    assert visited.request("/api/status")[0] == 401
    assert visited.log_in("admin") == 303


def test_x_forwarded_for_is_ignored_unless_its_proxy_is_configured(central) -> None:
    def guesses(url: str) -> list[int]:
        client = Client(url)
        return [client.request("/login", {"user": "admin", "password": "wrong", "csrf": client.csrf()},
                               {"X-Forwarded-For": f"203.0.113.{n}"})[0] for n in range(7)]

    proc, url = serve(central.config, central.env)
    try:  # the login limit keys on the TCP peer: a new X-Forwarded-For per guess buys nothing
        assert guesses(url) == [401] * 5 + [429] * 2
    finally:
        proc.terminate()
        proc.wait(30)
    audited = central.sql(f"SELECT DISTINCT detail FROM `{central.schema}`.console_audit "
                          "WHERE action = 'login refused'")
    assert audited == [("from 127.0.0.1",)]
    proc, url = serve(central.config, {**central.env, "DBSYNC_CONSOLE__TRUSTED_PROXIES": "127.0.0.1, ::1"})
    try:  # behind a configured proxy each forwarded client has a limit of its own
        assert guesses(url) == [401] * 7
        client = Client(url)  # the proxy's own addition is the last address: what the client wrote before is not
        assert client.log_in("admin", {"X-Forwarded-For": "198.51.100.9, 192.0.2.44"}) == 303
    finally:
        proc.terminate()
        proc.wait(30)
    addresses = {row[0] for row in central.sql(f"SELECT detail FROM `{central.schema}`.console_audit")}
    assert {f"from 203.0.113.{n}" for n in range(7)} <= addresses and "from 192.0.2.44" in addresses
    assert "from 198.51.100.9" not in addresses


def test_metrics_want_a_token_by_default(central) -> None:
    def scrape(url: str, token: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        try:
            with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers=headers),
                                        timeout=30) as response:
                return int(response.status), response.headers
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.headers

    proc, url = serve(central.config, central.env)  # no token configured: closed, whatever is sent
    try:
        status, headers = scrape(url, None)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert scrape(url, "")[0] == 401 and scrape(url, "anything")[0] == 401
    finally:
        proc.terminate()
        proc.wait(30)
    token_file = central.config.parent / "metrics-token"
    token_file.write_text("from-a-file-7\n")
    proc, url = serve(central.config, {**central.env, "DBSYNC_CONSOLE__METRICS_TOKEN_FILE": str(token_file)})
    try:
        assert scrape(url, None)[0] == 401 and scrape(url, "wrong")[0] == 401
        assert scrape(url, "from-a-file-7")[0] == 200
    finally:
        proc.terminate()
        proc.wait(30)
    proc, url = serve(central.config, {**central.env, "DBSYNC_CONSOLE__METRICS_OPEN": "true"})
    try:
        assert scrape(url, None)[0] == 200  # the explicit opt-out
    finally:
        proc.terminate()
        proc.wait(30)
