"""The console in a real headless browser (Debian's chromium through selenium) against a real central."""

from __future__ import annotations

import datetime as dt
import http.client
import http.cookiejar
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import dbsync
from prometheus_client.parser import text_string_to_metric_families
from receiver_helpers import Central, drop_schema, make_central, make_site
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_apply import new_person

from dbsync_cli.receiver import state
from devtools.services.tls import ensure_tls

pytestmark = pytest.mark.lane2
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PASSWORDS = {"admin": "operator-pass-1", "viewer": "readonly-pass-1"}
METRICS_TOKEN = "scrape-token-1"  # /metrics is closed without one (console.metrics_token)


def serve(config: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "console", "serve", "--config", str(config),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/login", timeout=2)
            return proc, url
        except OSError:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the console did not start"
            time.sleep(0.3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def console(openmrs_db, services, tmp_path, broker_settings) -> Iterator[tuple[Central, str, dict[str, Any]]]:
    """Two sites synced into central, a conflict and two retry entries; the console serving it."""
    central = make_central(openmrs_db, tmp_path, broker_settings, sites=("site1", "site2"))
    site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
    site2 = make_site(openmrs_db, services, tmp_path, broker_settings, name="site2", instance="site2")
    _person, name = new_person(site1, "Ann")
    new_person(site2, "Bea")
    central.apply(site1.messages())
    central.apply(site2.messages())
    central.sql("UPDATE person_name SET given_name = 'Central Ann', date_changed = %s WHERE uuid = %s",
                (dt.datetime(2030, 1, 1), name))
    site1.sql("UPDATE person_name SET family_name = 'Site', date_changed = '2024-06-01 10:00:00' WHERE uuid = %s",
              (name,))
    central.apply(site1.messages())  # parked: central's edit is newer
    with central.db.connect(autocommit=False) as conn:
        state.set_disabled(conn, central.schema, "site2", True)
        conn.commit()
    new_person(site2, "Cid")
    central.apply(site2.messages())  # site2 is disabled: its messages wait in the retry queue
    with central.db.connect(autocommit=False) as conn:  # what the running receiver records every minute
        state.record_samples(conn, central.schema)
        conn.cursor().execute(f"UPDATE `{central.schema}`.receiver_sample SET date_sampled = date_sampled - "
                              "INTERVAL 10 MINUTE")
        conn.commit()
    new_person(site1, "Dan")
    central.apply(site1.messages())
    with central.db.connect(autocommit=False) as conn:
        state.record_samples(conn, central.schema)
    for user, role in (("admin", "operator"), ("viewer", "readonly")):
        dbsync("console", "user", "add", user, "--role", role, "--password-stdin", "--config", str(central.config),
               env=central.env, stdin=(PASSWORDS[user] + "\n").encode())
    proc, url = serve(central.config, {**central.env, "DBSYNC_CONSOLE__METRICS_TOKEN": METRICS_TOKEN})
    try:
        yield central, url, {"name": name, "site1": site1}
    finally:
        proc.terminate()
        proc.wait(30)
        drop_schema(central)


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
                     "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    driver.implicitly_wait(5)
    yield driver
    driver.quit()


def shot(driver: webdriver.Chrome, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"console-{name}.png"))


def log_in(driver: webdriver.Chrome, url: str, user: str) -> None:
    driver.get(url + "/")
    assert driver.current_url.endswith("/login")
    driver.find_element(By.ID, "user").send_keys(user)
    driver.find_element(By.ID, "password").send_keys(PASSWORDS[user])
    driver.find_element(By.ID, "login").click()
    assert driver.find_element(By.ID, "sites")


def test_an_operator_sees_the_sites_resolves_a_conflict_by_merge_retries_drops_and_reads_portuguese(
        console, browser) -> None:
    central, url, data = console
    driver = browser
    driver.get(url + "/")
    shot(driver, "login")
    log_in(driver, url, "admin")
    sites = {row.get_attribute("data-site") for row in driver.find_elements(By.CSS_SELECTOR, "tr.site")}
    assert sites == {"site1", "site2"}
    site1 = driver.find_element(By.CSS_SELECTOR, "tr.site[data-site='site1']")
    assert site1.find_element(By.CSS_SELECTOR, "td.conflicts").text == "1"
    assert site1.find_element(By.CSS_SELECTOR, "td.rate").text != "-"  # from the samples of the last minutes
    site2 = driver.find_element(By.CSS_SELECTOR, "tr.site[data-site='site2']")
    assert int(site2.find_element(By.CSS_SELECTOR, "td.retry").text) >= 2
    shot(driver, "sites")
    driver.find_element(By.LINK_TEXT, "site1").click()
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 4 and int(charts[0].get_attribute("data-points")) >= 2
    shot(driver, "site")
    driver.find_element(By.LINK_TEXT, "REST calls").click()
    assert driver.find_element(By.ID, "rest")

    driver.find_element(By.LINK_TEXT, "Conflicts").click()
    (row,) = driver.find_elements(By.CSS_SELECTOR, "tr.conflict")
    row.find_element(By.TAG_NAME, "a").click()
    differing = {r.get_attribute("data-column") for r in driver.find_elements(By.CSS_SELECTOR, "tr.differs")}
    assert {"given_name", "family_name"} <= differing
    conflict_url = driver.current_url
    assert _history(driver) == ["applied", "conflict"]  # the archive's "history of this row"
    shot(driver, "conflict")
    driver.find_element(By.ID, "col-family_name").click()  # the site's family name, central's given name
    assert "queued" in click_for_flash(driver, driver.find_element(By.ID, "merge"))  # carried out in the background
    assert "resolved (merge)" in last_outcome(driver)
    assert central.sql("SELECT given_name, family_name FROM person_name WHERE uuid = %s", (data["name"],)) == [
        ("Central Ann", "Site")]
    driver.get(conflict_url)  # the story goes on: merged and resolved by the console's user
    assert _history(driver) == ["applied", "conflict", "applied", "resolved"]
    rows = driver.find_elements(By.CSS_SELECTOR, "#history-rows tr.event")
    assert [r.find_elements(By.TAG_NAME, "td")[6].text for r in rows[2:]] == ["console:admin"] * 2
    assert rows[3].find_elements(By.TAG_NAME, "td")[7].text == "conflict resolved: merge"

    driver.find_element(By.LINK_TEXT, "Retry queue").click()
    entries = driver.find_elements(By.CSS_SELECTOR, "tr.entry")
    assert len(entries) >= 2
    first, second = (e.get_attribute("data-id") for e in entries[:2])
    driver.find_element(By.CSS_SELECTOR, f"tr.entry[data-id='{second}'] a.history").click()
    assert set(_history(driver)) == {"retry"}  # parked (its site is disabled): the person and its patient row
    ((dropped, table),) = central.sql(f"SELECT entity_uuid, table_name FROM `{central.schema}`.receiver_retry_queue "
                                      "WHERE id = %s", (second,))
    shot(driver, "retry")
    click_for_flash(driver, driver.find_element(By.CSS_SELECTOR, f"tr.entry[data-id='{first}'] button.again"))
    assert f"entry {first}:" in last_outcome(driver)
    attempts = central.sql(f"SELECT attempts FROM `{central.schema}`.receiver_retry_queue WHERE id = %s", (first,))
    assert attempts and attempts[0][0] >= 1
    click_for_flash(driver, driver.find_element(By.CSS_SELECTOR, f"tr.entry[data-id='{second}'] button.drop"))
    assert f"retry entry {second} dropped" in last_outcome(driver)
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE id = %s",
                       (second,)) == [(0,)]
    driver.find_element(By.LINK_TEXT, "Archive").click()  # the search page: the dropped entry's row, by uuid
    driver.find_element(By.ID, "a-uuid").send_keys(dropped.upper())
    driver.find_element(By.ID, "a-table").send_keys(table)
    driver.find_element(By.ID, "search").click()
    found = driver.find_elements(By.CSS_SELECTOR, "#archive-rows tr.archived")
    assert [r.get_attribute("data-outcome") for r in found] == ["retry", "dropped"]
    found[0].find_element(By.TAG_NAME, "a").click()
    assert dropped in driver.find_element(By.ID, "wire").text  # the message as it came
    shot(driver, "archive")

    driver.find_element(By.LINK_TEXT, "Audit log").click()
    audit = driver.find_element(By.ID, "audit").text
    assert "conflict merge" in audit and "retry again" in audit and "retry drop" in audit and "admin" in audit

    driver.find_element(By.ID, "lang-pt").click()
    driver.get(url + "/")
    assert driver.find_element(By.LINK_TEXT, "Fila de repetição")
    assert "Sítio" in driver.find_element(By.ID, "sites").text
    shot(driver, "sites-pt")
    driver.find_element(By.ID, "lang-en").click()


def _history(driver: webdriver.Chrome) -> list[str]:
    """The outcomes the page's "history of this row" panel lists, oldest first."""
    return [r.get_attribute("data-outcome") for r in driver.find_elements(By.CSS_SELECTOR, "#history-rows tr.event")]


class _Http:
    """A client with its own cookie jar, for requests a browser would not make (no CSRF token, no login)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  _NoRedirect())

    def request(self, path: str, form: dict[str, str] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        try:
            with self.opener.open(req, timeout=30) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def csrf(self, path: str = "/login") -> str:
        _status, body, _headers = self.request(path)
        return re.search(r'name="csrf" value="([^"]+)"', body).group(1)  # type: ignore[union-attr]

    def log_in(self, user: str) -> None:
        status, _body, headers = self.request("/login", {"user": user, "password": PASSWORDS[user],
                                                         "csrf": self.csrf()})
        assert status == 303 and headers["location"] == "/", status


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_nothing_without_login_nothing_without_csrf_and_read_only_users_cannot_act(console) -> None:
    central, url, _data = console
    entry = central.sql(f"SELECT MIN(id) FROM `{central.schema}`.receiver_retry_queue")[0][0]
    anonymous = _Http(url)
    assert anonymous.request("/api/status")[0] == 401
    status, _body, headers = anonymous.request(f"/retry/{entry}/drop", {"csrf": "x"})
    assert status == 303 and headers["location"] == "/login"
    assert anonymous.request("/conflicts")[0] == 303
    operator = _Http(url)
    operator.log_in("admin")
    assert operator.request(f"/retry/{entry}/drop", {})[0] == 403  # no CSRF token
    assert operator.request(f"/retry/{entry}/drop", {"csrf": "forged"})[0] == 403
    viewer = _Http(url)
    viewer.log_in("viewer")
    assert viewer.request("/api/retry")[0] == 200
    status, body, _headers = viewer.request("/api/sites/site1/samples?days=1")
    assert status == 200 and len(orjson.loads(body)) >= 2
    status, body, _headers = viewer.request("/api/conflicts/1")
    assert status == 200 and any(c["differs"] for c in orjson.loads(body)["columns"])
    assert viewer.request(f"/retry/{entry}/drop", {"csrf": viewer.csrf("/retry")})[0] == 403
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE id = %s",
                       (entry,)) == [(1,)]
    # the session cookie: signed, HttpOnly, SameSite
    fresh = _Http(url)
    _status, _body, headers = fresh.request("/login", {"user": "admin", "password": PASSWORDS["admin"],
                                                       "csrf": fresh.csrf()})
    cookie = headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    # logins are limited per address: the sixth wrong password in a minute is refused outright
    guesser = _Http(url)
    codes = [guesser.request("/login", {"user": "admin", "password": "wrong", "csrf": guesser.csrf()})[0]
             for _ in range(6)]
    assert codes == [401] * 5 + [429]
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.console_audit WHERE action = 'login refused'")[0][
        0] >= 5


def test_a_non_ascii_token_or_csrf_field_is_refused_not_a_server_error(console) -> None:
    """Review finding 10: hmac.compare_digest on str raised TypeError for non-ASCII input (a 500)."""
    central, url, _data = console
    entry = central.sql(f"SELECT MIN(id) FROM `{central.schema}`.receiver_retry_queue")[0][0]
    client = _Http(url)
    for header in ("Bearer scrape-tökén-1", "Bearer \u00e9", "Bäsic x"):
        assert client.request("/metrics", headers={"Authorization": header})[0] == 401, header
    client.log_in("admin")
    for forged in ("ünïcode", "\u4e2d\u6587", client.csrf("/retry") + "é"):
        assert client.request(f"/retry/{entry}/drop", {"csrf": forged})[0] == 403, forged
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE id = %s",
                       (entry,)) == [(1,)]


def test_metrics_parse_and_carry_per_site_lag_and_queue_sizes(console) -> None:
    _central, url, _data = console
    with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers={
            "Authorization": f"Bearer {METRICS_TOKEN}"}), timeout=30) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    lag = {s.labels["site"] for s in families["dbsync_site_silent_seconds"].samples}
    assert lag == {"site1", "site2"}
    retry = {s.labels["site"]: s.value for s in families["dbsync_retry_queue_entries"].samples}
    assert retry.get("site2", 0) >= 2
    assert [s.value for s in families["dbsync_conflicts"].samples] == [1.0]
    assert "dbsync_inbox" in families


def test_the_sender_console_shows_the_checkpoint_and_its_metrics(openmrs_db, services, tmp_path,
                                                                 broker_settings) -> None:
    site = make_site(openmrs_db, services, tmp_path, broker_settings)
    dbsync("console", "user", "add", "clinic", "--role", "readonly", "--password-stdin", "--config",
           str(site.config), env=site.env, stdin=b"clinic-pass-1\n")
    proc, url = serve(site.config, {**site.env, "DBSYNC_CONSOLE__METRICS_OPEN": "true"})  # the opt-out
    try:
        client = _Http(url)
        assert client.request("/api/status")[0] == 401
        status, _body, _headers = client.request("/login", {"user": "clinic", "password": "clinic-pass-1",
                                                            "csrf": client.csrf()})
        assert status == 303
        _status, page, _headers = client.request("/")
        assert 'id="sender"' in page and "mysql-bin." in page  # the checkpoint's binlog file
        _status, body, _headers = client.request("/api/status")
        assert orjson.loads(body)["checkpoint"]["file"].startswith("mysql-bin.")
        with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
            families = {f.name for f in text_string_to_metric_families(response.read().decode())}
        assert {"dbsync_sender_lag_bytes", "dbsync_sender_checkpoint_age_seconds", "dbsync_sender_state"} <= families
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_console_over_tls_sets_a_secure_cookie(openmrs_db, services, tmp_path, broker_settings) -> None:
    tls = ensure_tls(services.home)
    central = make_central(openmrs_db, tmp_path, broker_settings)
    env = {**central.env, "DBSYNC_CONSOLE__TLS_CERT": str(tls.server_cert),
           "DBSYNC_CONSOLE__TLS_KEY": str(tls.server_key)}
    dbsync("console", "user", "add", "admin", "--role", "operator", "--password-stdin", "--config",
           str(central.config), env=env, stdin=b"operator-pass-1\n")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "dbsync_cli", "console", "serve", "--config", str(central.config),
                             "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{port}/login", timeout=2, context=context) as page:
                    cookie = page.headers["set-cookie"].lower()
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline, "the console did not start"
                time.sleep(0.3)
        assert "secure" in cookie and "httponly" in cookie
        with pytest.raises((OSError, http.client.HTTPException)):  # plain HTTP on the TLS port is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5).read()
    finally:
        proc.terminate()
        proc.wait(30)
        drop_schema(central)


def click_for_flash(driver: webdriver.Chrome, button: object) -> str:
    """Click a form's button and read the flash of the page it leads to, never the old page's (a POST, a redirect,
    then a new page: reading before the old one is gone finds its element stale)."""
    old = driver.find_element(By.TAG_NAME, "html")
    button.click()  # type: ignore[attr-defined]
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))
    return str(driver.find_element(By.ID, "flash").text)


def last_outcome(driver: webdriver.Chrome, timeout: float = 120) -> str:
    """The outcome of the newest action in the page's actions table, once it ended (the page follows a running
    action and reloads itself when it ends)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            row = driver.find_elements(By.CSS_SELECTOR, "tr.request")[0]
            if row.get_attribute("data-state") in ("done", "failed"):
                return str(row.find_element(By.CSS_SELECTOR, ".outcome").text)
        except Exception:  # noqa: BLE001 - the page is reloading
            pass
        assert time.monotonic() < deadline, "the action did not end"
        time.sleep(0.2)
