"""The /docs page works as a person uses it: headless Chromium, Swagger UI's "Try it out".

The browser may reach nothing but the node: every request the page makes is read from
Chromium's network log and must go to the node's own origin (/docs*, /openapi.json and the
API calls "Try it out" makes). As a second guard, Chromium is given a proxy on a closed
loopback port for everything but loopback, and host names other than the node's resolve to
nothing, so a stray request fails instead of leaving the machine.

Needs Debian's chromium, chromium-driver and python3-selenium.
"""

import json
import os
import shutil
import tempfile
import uuid
from urllib.parse import urlsplit

import pytest
import requests

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    if os.environ.get("CI"):  # `make deps` installs it; a CI run must not skip silently
        raise
    pytest.skip("needs Debian package python3-selenium", allow_module_level=True)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TIMEOUT = 30  # seconds; the bundle is 1.7 MB of JavaScript and CI shares 2 cores


@pytest.fixture
def browser():
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        reason = "needs Debian packages chromium and chromium-driver"
        if os.environ.get("CI"):  # `make deps` installs them; CI must not skip silently
            pytest.fail(reason)
        pytest.skip(reason)
    profile = tempfile.mkdtemp(prefix="kvcache-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage",
        "--metrics-recording-only", "--no-default-browser-check", "--password-store=basic",
        f"--user-data-dir={profile}", "--window-size=1400,2000",
        # Nothing but loopback is reachable: loopback bypasses the proxy, and the proxy is a
        # closed port; no host name but localhost resolves.
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait(driver, condition, what):
    def safe(d):
        try:
            return condition(d)
        except StaleElementReferenceException:  # React re-rendered it; look again
            return False

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.1).until(
        safe, message=f"timed out waiting for {what}")


def open_operation(driver, operation_id):
    """Expands an operation (tag "keys") and returns its block, ready in try-it-out mode."""
    block = wait(driver, lambda d: d.find_element(By.ID, f"operations-keys-{operation_id}"),
                 f"operation {operation_id}")
    if "is-open" not in block.get_attribute("class"):
        block.find_element(By.CSS_SELECTOR, ".opblock-summary-control, .opblock-summary").click()
    # tryItOutEnabled: the form is editable at once, with an Execute button.
    wait(driver, lambda d: block.find_element(By.CSS_SELECTOR, "button.execute"),
         f"Execute button of {operation_id}")
    return block


def type_into(element, text):
    # React keeps its own copy of the value: replace it with keystrokes, not element.clear().
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)


def set_param(block, name, value):
    row = block.find_element(By.CSS_SELECTOR, f'tr[data-param-name="{name}"]')
    type_into(row.find_element(By.CSS_SELECTOR, "input"), value)


def execute(driver, block):
    block.find_element(By.CSS_SELECTOR, "button.execute").click()

    def live_status(_):
        cells = block.find_elements(
            By.CSS_SELECTOR, ".live-responses-table tbody .response-col_status")
        return cells[0].text.strip() if cells and cells[0].text.strip() else False

    return wait(driver, live_status, "the live response")


def live_body(block):
    return block.find_element(
        By.CSS_SELECTOR, ".live-responses-table tbody .response-col_description pre").text


def network_requests(driver):
    """(url, document url) of every request the browser started, from the DevTools log."""
    requests_seen = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            requests_seen.append((params["request"]["url"], params.get("documentURL", "")))
    return requests_seen


@pytest.mark.parametrize("docs_path", ["/docs", "/docs/"])
def test_try_it_out_writes_and_reads_a_key(node, browser, docs_path):
    key = f"from-the-docs-{uuid.uuid4().hex[:8]}"
    value = f"written by Swagger UI {uuid.uuid4().hex}"
    origin = node.url

    browser.get(origin + docs_path)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".information-container .title"),
         "Swagger UI to render /openapi.json")
    assert "kvcache node API" in browser.find_element(By.CSS_SELECTOR, ".title").text

    # PUT /v1/{key} with a text body -> 201 Created.
    put = open_operation(browser, "putKey")
    set_param(put, "key", key)
    type_into(put.find_element(By.CSS_SELECTOR, "textarea.body-param__text"), value)
    assert execute(browser, put) == "201"

    # GET /v1/{key} -> 200 with the value in the response body panel.
    get = open_operation(browser, "getKey")
    set_param(get, "key", key)
    assert execute(browser, get) == "200"
    wait(browser, lambda _: value in live_body(get), "the value in the response body")

    # The key really is on the node, as text/plain with the exact bytes typed.
    r = requests.get(f"{origin}/v1/{key}")
    assert r.status_code == 200
    assert r.text == value
    assert r.headers["Content-Type"].startswith("text/plain")

    # Nothing went over the network but to the node; the page itself fetched only the
    # documented places. (chrome:// and data: URLs are the browser's own, not network.)
    seen = network_requests(browser)
    assert seen, "the DevTools network log is empty"
    page_paths = set()
    for url, document in seen:
        parts = urlsplit(url)
        if parts.scheme in ("http", "https", "ws", "wss", "ftp"):
            assert f"{parts.scheme}://{parts.netloc}" == origin, f"request left the node: {url}"
        if document.startswith(origin):
            assert parts.scheme in ("http", "data", "blob"), f"page requested {url}"
            if parts.scheme == "http":
                page_paths.add(parts.path)
    expected = {docs_path, "/docs/swagger-ui.css", "/docs/swagger-ui-bundle.js",
                "/openapi.json", f"/v1/{key}"}
    assert page_paths == expected, f"unexpected requests: {sorted(page_paths ^ expected)}"

    # No Content-Security-Policy violation or script error in the console.
    errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
