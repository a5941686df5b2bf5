"""Debian's headless chromium under selenium, shared by the browser tests (test_pay_browser.py,
test_demo_browser.py): a driver, phone-sized or desktop, and small helpers. Screenshots go to
test-artifacts/browser/."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PHONE = {"width": 390, "height": 844, "pixelRatio": 2}
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/130.0 Mobile Safari/537.36")


@contextmanager
def chrome(tmp_path, phone=True, window=(1280, 1000)):
    """A chromium driver: a phone (mobile emulation) or a desktop window of `window` pixels."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed: run `make setup` (installs them with apt)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--user-data-dir=%s" % tempfile.mkdtemp(dir=tmp_path, prefix="chrome-")):
        opts.add_argument(flag)
    if phone:
        opts.add_experimental_option("mobileEmulation", {"deviceMetrics": PHONE, "userAgent": PHONE_UA})
    else:
        opts.add_argument("--window-size=%d,%d" % window)
    log = open(tmp_path / ("chromedriver-%s.log" % ("phone" if phone else "desktop")), "w")
    before = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"      # selenium must never try to download a browser or driver
    try:
        driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, log_output=log))
    except BaseException:
        log.close()
        raise
    finally:
        if before is None:
            del os.environ["SE_OFFLINE"]
        else:
            os.environ["SE_OFFLINE"] = before
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            log.close()


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def wait(driver, condition, what, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def text(driver, css):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.CSS_SELECTOR, css).text


def click(driver, css):
    from selenium.webdriver.common.by import By
    driver.find_element(By.CSS_SELECTOR, css).click()
