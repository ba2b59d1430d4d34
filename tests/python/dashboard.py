"""Drives the dashboard in a real headless Chromium (Selenium), as an
operator would: see that nothing shows before logging in, log in as a
named operator, find a routine and disable it and see the change under
their name, fix a routine's bad schedule after previewing it, run a
routine now and see it in its history, and take the README's screenshot.

Run by tests/browser.rs, which starts the beat and checks the database
afterwards. Prints one JSON line of what it saw; exits non-zero on any
failed step.

    python dashboard.py BASE_URL OPERATOR TOKEN SCREENSHOT_PATH
"""

import json
import sys
import time
from datetime import datetime, timezone

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

BASE, OPERATOR, TOKEN, SCREENSHOT = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def until(what, check, limit=15.0, reload=None):
    """Waits up to `limit` seconds for `check()` to be true, reloading the
    page (if `reload`) between looks."""
    deadline = time.monotonic() + limit
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)
        if reload:
            reload()


def text(driver, selector):
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found[0].text if found else ""


def says(driver, words):
    """Waits for the page's message to contain `words` (after a click that
    loads a new page)."""
    until(f"the message {words!r}", lambda: words in text(driver, ".message"))


def open_routine(driver, search, name):
    driver.get(BASE + "/")
    box = driver.find_element(By.NAME, "q")
    box.clear()
    box.send_keys(search)
    box.submit()
    until("the search", lambda: "q=" in driver.current_url)
    links = driver.find_elements(By.CSS_SELECTOR, "#routines tbody a")
    assert [a.text for a in links] == [name], [a.text for a in links]
    links[0].click()
    until(f"the page of {name}", lambda: text(driver, "h1") == name)


def main():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1280,860", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    seen = {}
    try:
        # Before logging in: the login form, and nothing of the routine.
        driver.get(BASE + "/routine?name=tick-every-second")
        assert driver.find_elements(By.NAME, "token"), driver.page_source
        assert "tick-every-second" not in driver.page_source, driver.page_source
        assert "browser" not in driver.page_source, "its kwargs"
        assert not driver.find_elements(By.ID, "action-disable")
        seen["anonymous_title"] = driver.title

        driver.find_element(By.NAME, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "login").click()
        until("the list after the login", lambda: driver.current_url.rstrip("/") == BASE)
        until("the login", lambda: driver.find_elements(By.XPATH, "//button[text()='Log out']"))
        assert text(driver, "#operator") == OPERATOR, text(driver, "#operator")

        # Find a routine and disable it.
        open_routine(driver, "tick", "tick-every-second")
        driver.find_element(By.ID, "action-disable").click()
        says(driver, "Disabled")
        seen["disabled_at"] = datetime.now(timezone.utc).isoformat()
        assert driver.find_elements(By.ID, "action-enable")
        # The change, under the operator's name, with the old and new value.
        latest = driver.find_elements(By.CSS_SELECTOR, "#edits tbody tr")[0].text
        assert OPERATOR in latest and "dashboard" in latest, latest
        assert "true → false" in latest, latest
        seen["change_row"] = latest

        # Fix a bad schedule: its error is shown, a preview, then save.
        open_routine(driver, "broken", "broken-report")
        until("the beat's error on broken-report",
              lambda: text(driver, "#last-error") not in ("", "none"),
              reload=driver.refresh)
        seen["error_before"] = text(driver, "#last-error")
        schedule = driver.find_element(By.NAME, "schedule")
        schedule.clear()
        schedule.send_keys('{"minute": "*/5"}')
        driver.find_element(By.ID, "preview").click()
        until("the preview", lambda: driver.find_elements(By.CSS_SELECTOR, "#preview-times li"))
        times = driver.find_elements(By.CSS_SELECTOR, "#preview-times li")
        assert len(times) == 10, driver.page_source
        seen["preview"] = [t.text for t in times[:3]]
        driver.find_element(By.ID, "save").click()
        says(driver, "Saved")
        until("the error to clear",
              lambda: text(driver, "#last-error") == "none",
              reload=driver.refresh)
        assert len(driver.find_elements(By.CSS_SELECTOR, "#next-times li")) == 10

        # Run one now and see it in its history.
        open_routine(driver, "ad-hoc", "ad-hoc")
        driver.find_element(By.ID, "action-run").click()
        says(driver, "Run requested")
        until("the on-demand run in the history",
              lambda: "(on demand)" in text(driver, "#runs"),
              reload=driver.refresh)
        seen["on_demand_row"] = [
            row.text for row in driver.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
            if "(on demand)" in row.text
        ][0]

        # The screenshot: the list, with a disabled routine in it.
        driver.get(BASE + "/")
        driver.save_screenshot(SCREENSHOT)
    finally:
        driver.quit()
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
