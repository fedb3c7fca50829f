"""Drives a node's dashboard in headless Chromium (selenium + the system chromedriver).

Usage: dashboard_browser.py URL SCREENSHOT_PATH
Checks what a person watching the page would notice: the inner step advances and the loss chart gains
points without a reload, a closed round shows in the verdicts table with its norms, a prompt submitted in the generate box comes back with text, and the logs
tab filters lines. Exits non-zero with the reason on the first failure.
"""

import shutil
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By

TIMEOUT_S = 60


def wait_for(what, predicate, timeout=TIMEOUT_S):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = predicate()
        except StaleElementReferenceException:
            # The live page re-rendered the element between finding and reading it: read again.
            value = None
        if value:
            return value
        time.sleep(0.25)
    sys.exit(f"timed out after {timeout} s waiting for {what}")


def main():
    url, screenshot = sys.argv[1], sys.argv[2]
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,1700"):
        options.add_argument(arg)
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser:
        options.binary_location = browser
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url)
        text = lambda id_: driver.find_element(By.ID, id_).text
        points = lambda: int(driver.find_element(By.ID, "loss-chart").get_attribute("data-points") or 0)

        wait_for("the live feed to connect", lambda: text("conn") == "live")
        # A marker on window survives only as long as the page is not reloaded.
        driver.execute_script("window.__not_reloaded = true")
        first_step = int(wait_for("a first inner step", lambda: text("inner-step") not in ("", "0") and text("inner-step")))
        first_points = wait_for("a first loss point", points)
        print(f"inner step {first_step}, loss chart {first_points} points")

        step_moved = lambda: int(text("inner-step")) != first_step or text("outer") != "0"
        wait_for("the inner step to advance", step_moved)
        grown = wait_for("the loss chart to gain points", lambda: points() > first_points and points())
        assert driver.execute_script("return window.__not_reloaded === true"), "the page was reloaded"
        print(f"inner step now {text('inner-step')} (round {text('outer')}), loss chart {grown} points, no reload")

        # The verdicts table gains the round when it closes, with the two norms the round reports.
        round_rows = lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('#rounds tbody tr'), row => Array.from(row.cells, c => c.innerText))"
        )
        closed = wait_for("a closed round in the verdicts table", lambda: (rows := round_rows()) and len(rows[0]) == 9 and rows[0])
        sent, applied = float(closed[5]), float(closed[6])
        assert sent > 0 and applied > 0, f"round {closed[0]}: ‖Δ‖ sent {sent}, applied {applied}"
        print(f"round {closed[0]} closed: ‖Δ‖ sent {sent}, applied {applied}")

        prompt = driver.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("Once upon a time")
        driver.find_element(By.ID, "generate").click()
        generated = wait_for("generated text", lambda: len(text("generated")) > len("Once upon a time") and text("generated"))
        assert generated.startswith("Once upon a time"), f"unexpected generation: {generated!r}"
        assert not generated.startswith("model_not_ready"), generated
        print(f"generated: {generated!r}")

        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(screenshot)
        print(f"screenshot: {screenshot}")

        driver.find_element(By.ID, "tab-logs").click()
        # One script reads every row, so a re-render of the live table cannot interleave with the read.
        rows = lambda: driver.execute_script(
            "return Array.from(document.querySelectorAll('#log-lines tbody tr'), row => row.innerText)"
        )
        wait_for("log lines", lambda: len(rows()) > 0)
        driver.find_element(By.ID, "log-text").send_keys("validation")
        wait_for("the text filter to apply", lambda: (lines := rows()) and all("validation" in line for line in lines))
        print(f"logs tab: {len(rows())} lines match 'validation'")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
