"""The console in a headless Chromium: the 30-day chart draws the data there is, and every page works at phone
width (375 px): the page body never scrolls sideways, a wide table scrolls inside its own box."""

from __future__ import annotations

import datetime as dt

import pytest
from selenium.webdriver.common.by import By
from test_console import browser, console, log_in, shot  # noqa: F401 - fixtures used by name

pytestmark = pytest.mark.lane2


def test_the_30_day_chart_shows_the_hours_there_are(console, browser) -> None:  # noqa: F811
    central, url, _data = console
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, second=0, microsecond=0)
    for hours, messages in ((3, 0), (2, 1), (1, 1)):  # a receiver that has sampled for three hours
        central.sql(f"INSERT INTO `{central.schema}`.receiver_sample (site, date_sampled, messages, inbox, retry) "
                    "VALUES ('site1', %s, %s, 0, 0)", (now - dt.timedelta(hours=hours), messages))
    log_in(browser, url, "admin")
    browser.get(url + "/sites/site1")
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 4
    month, month_backlog = charts[2], charts[3]
    assert int(month.get_attribute("data-points")) >= 3
    line = month.find_element(By.TAG_NAME, "polyline")
    # the line spans most of the chart, not a few pixels at its right edge (30 days of axis for 3 hours of data)
    assert line.size["width"] > 0.5 * month.size["width"], (line.size, month.size)
    assert month_backlog.find_elements(By.TAG_NAME, "circle")
    shot(browser, "site-30-days")


def test_pages_fit_a_phone_screen(console, browser) -> None:  # noqa: F811
    _central, url, _data = console
    browser.set_window_size(375, 812)
    log_in(browser, url, "admin")
    width = browser.execute_script("return window.innerWidth")
    assert width <= 400
    for path in ("/", "/sites/site1", "/retry", "/conflicts", "/conflicts/1", "/verify", "/audit", "/rest",
                 "/archive?site=site1", "/archive/1", "/retry?history=1"):
        browser.get(url + path)
        scroll = browser.execute_script("return document.documentElement.scrollWidth")
        body = browser.execute_script("return document.body.scrollWidth")
        assert scroll <= width and body <= width, (path, scroll, body, width)
        for table in browser.find_elements(By.TAG_NAME, "table"):  # wide tables scroll inside their box
            box = browser.execute_script("const r = arguments[0].getBoundingClientRect(); return [r.left, r.right];",
                                         table)
            assert box[0] >= 0 and box[1] <= width + 0.5, (path, box)
        if path == "/":
            shot(browser, "sites-phone")
            sites = browser.find_element(By.ID, "sites")
            inner, outer = (browser.execute_script(f"return arguments[0].{p}", sites)
                            for p in ("scrollWidth", "clientWidth"))
            assert inner > outer  # the sites table is wider than a phone: it scrolls in its own box
