"""The built leaderboard in a real browser: headless Chromium driven through the DevTools protocol.

Checks: the pages load from file:// with no console errors, clicking a header reorders the rows,
the filter hides rows, and a plugin name holding `<script>` is shown as text, never run.
Chromium comes from Debian's `chromium` package (scripts/test.sh installs it); without it the
tests skip locally and fail under CI.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from test_leaderboard import synthetic_card, write_cards

from cleanbench.leaderboard.site import build_site

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
    "--remote-debugging-port=0",
    "--window-size=1400,1000",
]
XSS_NAME = "<script>window.__pwned = 1</script><img src=x onerror=window.__pwned=2>"


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with a fresh profile, and a DevTools connection to its first page."""

    def __init__(self, binary: str) -> None:
        import websocket

        self.profile = tempfile.mkdtemp(prefix="cleanbench-chromium-")
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _port(self) -> int:
        marker = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if marker.exists() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.1)
        raise RuntimeError("chromium did not open its DevTools port")

    def call(self, method: str, **params: Any) -> dict:
        """Send one DevTools command and return its result; events met on the way are kept."""
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        self.eval("new Promise(r => requestAnimationFrame(() => r(true)))")

    def eval(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the middle of the element."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView();"
                        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_into(self, selector: str, text: str) -> None:
        self.click(selector)
        self.call("Input.insertText", text=text)

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and browser-side errors (failed loads, CSP) so far."""
        self.call("Runtime.evaluate", expression="0")
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(json.dumps(params["exceptionDetails"])[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(json.dumps(params.get("args"))[:500])
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                found.append(f"{params['entry'].get('source')}: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return found

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    binary = chromium_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; scripts/test.sh installs Debian's chromium package")
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    pytest.importorskip("websocket", reason="websocket-client is in the test extra")
    instance = Browser(binary)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A site from synthetic cards: 3 attacks (one named with a script tag) x 3 defenses x 2 seeds."""
    root = tmp_path_factory.mktemp("browser")
    cards = []
    for attack, strength in (("badnet", 95), ("blended", 70), (XSS_NAME, 50)):
        for defense, asr_after, ca_after in (("none", strength, 80), ("cleanclip", 10, 76), ("finetune", 40, 79)):
            for seed in (0, 1):
                cards.append(synthetic_card(attack=attack, defense=defense, seed=seed, asr=(strength, 100),
                                            asr_after=(min(100, asr_after + 3 * seed), 100), ca=(80, 100),
                                            ca_after=(ca_after - seed, 100), seconds=5.0 + seed))
    cards.append(synthetic_card(attack="badnet", defense="unimodal", status="failed"))
    write_cards(root / "results", cards)
    build_site(root / "results", root / "site")
    return root / "site"


def _column(browser: Browser, column: str) -> list[str]:
    """The sort keys of one column (by its data-col name), top to bottom, visible rows only."""
    return browser.eval(
        "(() => { const t = document.getElementById('leaderboard');"
        f" const i = t.querySelector('th[data-col={column}]').cellIndex;"
        " return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[i].getAttribute('data-v')); })()")


def test_index_loads_without_console_errors(browser, site, tmp_path):
    browser.open(site / "index.html")
    assert browser.errors() == []
    assert browser.eval("document.querySelectorAll('#leaderboard tbody tr').length") == 3 * 4
    assert browser.eval("[...document.images].every(i => i.complete && i.naturalWidth > 0 && i.alt.length > 20)")
    browser.screenshot(tmp_path / "index.png")
    assert (tmp_path / "index.png").stat().st_size > 10_000


def test_clicking_a_header_reorders_rows(browser, site):
    browser.open(site / "index.html")
    before = _column(browser, "asr")
    browser.click("#leaderboard th[data-col=asr] button")
    ascending = _column(browser, "asr")
    assert ascending != before
    numbers = [float(v) for v in ascending if v]
    assert numbers == sorted(numbers) and ascending[-1] == ""  # N/A (failed, not run) sorts last
    browser.click("#leaderboard th[data-col=asr] button")
    descending = [float(v) for v in _column(browser, "asr") if v]
    assert descending == sorted(numbers, reverse=True)
    assert browser.eval("document.querySelector('#leaderboard th[data-col=asr]').getAttribute('aria-sort')") == "descending"
    assert browser.errors() == []


def test_filter_hides_rows(browser, site):
    browser.open(site / "index.html")
    visible = "document.querySelectorAll('#leaderboard tbody tr:not([hidden])').length"
    assert browser.eval(visible) == 12
    browser.type_into("#filter-text", "blended")
    assert browser.eval(visible) == 4
    assert set(_column(browser, "attack")) == {"blended"}
    browser.eval("(() => { const s = document.querySelector('select[data-filter=defense]'); s.value = 'cleanclip';"
                 " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    assert browser.eval(visible) == 1
    assert "1 of 12" in browser.eval("document.getElementById('shown').textContent")
    assert browser.errors() == []


@pytest.mark.parametrize("page", ["index", "card", "attack"])
def test_script_in_a_plugin_name_renders_as_text(browser, site, page):
    if page == "index":
        path = site / "index.html"
    elif page == "attack":
        path = next(p for p in (site / "attacks").glob("*.html") if p.name.startswith("_script_"))
    else:
        path = next(p for p in sorted((site / "cards").glob("*.html")) if "__pwned" in p.read_text())
    browser.open(path)
    assert browser.eval("typeof window.__pwned") == "undefined"
    assert browser.eval("document.scripts.length") == 1
    assert browser.eval(f"document.body.textContent.includes({json.dumps(XSS_NAME)})")
    assert browser.errors() == []
