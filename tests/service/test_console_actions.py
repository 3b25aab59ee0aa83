"""The console acts in the background: a click queues the action and the page comes back at once, then shows its
progress and outcome (a real headless browser against a real central; no receiver runs, so the console's own
worker carries the action out)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import dbsync
from receiver_helpers import Central, drop_schema, make_central, make_site
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait
from test_bulk_actions import _conflicts
from test_console import PASSWORDS, browser, log_in, serve, shot  # noqa: F401 - the browser fixture

pytestmark = pytest.mark.lane2
PARKED = 6000  # messages held behind the conflicts: resolving them releases (and judges) every one


@pytest.fixture
def busy_console(openmrs_db, services, tmp_path, broker_settings) -> Iterator[tuple[Central, str, dict[str, int]]]:
    central = make_central(openmrs_db, tmp_path, broker_settings)
    site1 = make_site(openmrs_db, services, tmp_path, broker_settings)
    central.apply(site1.messages())
    numbers = _conflicts(central, site1, [f"P{i}" for i in range(12)])
    with central.db.connect(autocommit=False) as conn, conn.cursor() as cur:
        # behind each conflicted row, copies of the site's message (as a site that kept editing it): resolving
        # releases them and the receiver judges every one, so the action runs long enough to show its progress
        cur.execute(f"SELECT message_id, site, table_name, entity_key, body FROM `{central.schema}`."
                    "receiver_conflict_queue WHERE resolved = 0")
        conflicted = cur.fetchall()
        for message_id, site, table, entity, body in conflicted:
            copies = PARKED // len(conflicted)
            cur.executemany(f"INSERT INTO `{central.schema}`.receiver_retry_queue (message_id, site, table_name, "
                            "entity_key, reason, attempts, date_created, kind) VALUES (%s, %s, %s, %s, "
                            "'held for the test', 1, UTC_TIMESTAMP(3), 'transient')",
                            [(f"{message_id}:copy{i}", site, table, entity) for i in range(copies)])
            cur.execute(f"INSERT INTO `{central.schema}`.receiver_retry_body (id, body) SELECT id, %s FROM "
                        f"`{central.schema}`.receiver_retry_queue WHERE entity_key = %s", (body, entity))
        conn.commit()
    dbsync("console", "user", "add", "admin", "--role", "operator", "--password-stdin", "--config",
           str(central.config), env=central.env, stdin=(PASSWORDS["admin"] + "\n").encode())
    proc, url = serve(central.config, central.env)
    try:
        yield central, url, numbers
    finally:
        proc.terminate()
        proc.wait(30)
        drop_schema(central)


def _request_row(driver: webdriver.Chrome) -> Any:
    return driver.find_elements(By.CSS_SELECTOR, "tr.request")[0]


def test_a_bulk_resolve_returns_at_once_and_the_page_follows_its_progress_to_the_outcome(
        busy_console, browser) -> None:  # noqa: F811 - the browser fixture
    central, url, numbers = busy_console
    driver = browser
    log_in(driver, url, "admin")
    driver.get(url + "/conflicts")
    driver.find_element(By.ID, "f-site").send_keys("site1")
    driver.find_element(By.ID, "f-reason").send_keys("edited centrally")
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "filter").click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))  # the filtered page, not the first one
    total = WebDriverWait(driver, 20, ignored_exceptions=(StaleElementReferenceException,)).until(
        lambda d: d.find_element(By.ID, "count").get_attribute("data-total"))
    assert total == str(len(numbers)), total
    shot(driver, "conflicts-filtered")
    old = driver.find_element(By.TAG_NAME, "html")
    driver.find_element(By.ID, "bulk-keep-central").click()  # first the count and a confirm step
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))
    assert driver.find_element(By.ID, "confirm-count").get_attribute("data-total") == str(len(numbers))
    assert f"{len(numbers)} entries match now" in driver.find_element(By.TAG_NAME, "main").text
    shot(driver, "bulk-confirm")
    old = driver.find_element(By.TAG_NAME, "html")
    started = time.monotonic()
    driver.find_element(By.ID, "confirm-yes").click()
    WebDriverWait(driver, 20).until(expected_conditions.staleness_of(old))
    driver.find_element(By.ID, "requests")  # the next page is there
    answered = time.monotonic() - started
    assert answered < 10.0, f"the confirmed bulk resolve took {answered:.1f} s to answer"  # was minutes
    assert "queued" in driver.find_element(By.ID, "flash").text
    seen = {_request_row(driver).get_attribute("data-state")}
    deadline = time.monotonic() + 300
    progress = ""
    while time.monotonic() < deadline:
        try:
            row = _request_row(driver)
            state = row.get_attribute("data-state")
            if state == "running" and "/" in row.find_element(By.CSS_SELECTOR, ".outcome").text:
                progress = row.find_element(By.CSS_SELECTOR, ".outcome").text
                shot(driver, "bulk-running")
        except Exception:  # noqa: BLE001 - the page reloads itself when the action ends
            time.sleep(0.2)
            continue
        seen.add(state)
        if state in ("done", "failed"):
            break
        time.sleep(0.2)
    outcome = _request_row(driver).find_element(By.CSS_SELECTOR, ".outcome").text
    assert _request_row(driver).get_attribute("data-state") == "done", (seen, outcome)
    assert f"{len(numbers)} conflict(s) resolved (keep-central)" in outcome
    assert seen & {"pending", "running"}, seen
    assert progress, f"no progress was shown (states seen: {seen})"
    shot(driver, "bulk-done")
    took = central.sql(f"SELECT TIMESTAMPDIFF(MICROSECOND, date_created, date_done) / 1e6 FROM "
                       f"`{central.schema}`.receiver_request ORDER BY id DESC LIMIT 1")[0][0]
    assert float(took) > answered, (took, answered)  # the page answered before the work was done
    assert central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_conflict_queue WHERE resolved = 0") == [
        (0,)]
    held = central.sql(f"SELECT COUNT(*) FROM `{central.schema}`.receiver_retry_queue WHERE message_id LIKE "
                       "'%%:copy%%'")[0][0]
    assert held == 0, f"{held} of the messages held behind the conflicts were not released"
    audit = central.sql(f"SELECT action, detail FROM `{central.schema}`.console_audit WHERE user = 'admin' "
                        "AND action LIKE 'conflict%%'")
    assert audit and "bulk" in audit[-1][0] and "--site site1" in audit[-1][1]
    print(f"bulk resolve of {len(numbers)} conflicts releasing {PARKED} held messages: page back in "
          f"{answered:.2f} s, work {float(took):.1f} s; progress shown: {progress!r}")
