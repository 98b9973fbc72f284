"""The built leaderboard in a real browser: headless Chromium driven through the DevTools protocol.

Checks: the pages load from file:// with no console errors, clicking a header reorders the rows,
the filter hides rows (also by field), the sort and filter state survive in the URL, the header of
the big table stays visible while it scrolls, the undefended reference row has no rank and a group
that did not implant is not ranked, the matrix is there and its cells link to their rows, every
gallery image loads, no page scrolls sideways at 390 px, and a plugin name holding `<script>` is
shown as text, never run.
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
from test_leaderboard_tracks import detection_card, write_detections

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

    def viewport(self, width: int, height: int = 1000) -> None:
        """Emulate a screen `width` CSS pixels wide (a phone below 600 px)."""
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)

    def navigate(self, url: str) -> None:
        """Load `url` as a new document (also when only its fragment differs from the current one)."""
        self.open_blank()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        self.eval("new Promise(r => requestAnimationFrame(() => r(true)))")

    def open_blank(self) -> None:
        self.events.clear()
        self.call("Page.navigate", url="about:blank")
        self.wait_for("Page.loadEventFired")
        self.events.clear()

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
    """A site from synthetic cards: a clean control and 4 attacks (one named with a script tag, one
    that does not implant) x 3 defenses x 2 seeds, one failed card of a fourth defense; detection
    cards of 2 detectors x 2 attacks x 2 seeds."""
    root = tmp_path_factory.mktemp("browser")
    cards = [synthetic_card(attack="none", defense=defense, seed=seed, ca_after=(80, 100), asr_after=(5, 100))
             for defense in ("none", "cleanclip", "finetune") for seed in (0, 1)]
    for attack, strength in (("badnet", 95), ("blended", 70), (XSS_NAME, 50), ("wanet", 5)):
        for defense, asr_after, ca_after in (("none", strength, 80), ("cleanclip", 10, 76), ("finetune", 40, 79)):
            asr_after = min(asr_after, strength)
            for seed in (0, 1):
                cards.append(synthetic_card(attack=attack, defense=defense, seed=seed, asr=(strength, 100),
                                            asr_after=(min(100, asr_after + 3 * seed), 100), ca=(80, 100),
                                            ca_after=(ca_after - seed, 100), seconds=5.0 + seed))
    cards.append(synthetic_card(attack="badnet", defense="unimodal", status="failed"))
    write_cards(root / "results", cards)
    write_detections(root / "results", [detection_card(detector=d, attack=a, seed=seed)[0] for d in ("k-distance", "cosine")
                                        for a in ("badnet", "blended") for seed in (0, 1)])
    build_site(root / "results", root / "site")
    return root / "site"


ROWS = 5 * 4  # (clean control + 4 attacks) x (none, cleanclip, finetune, unimodal)


def _column(browser: Browser, column: str) -> list[str]:
    """The sort keys of one column (by its data-col name), top to bottom, visible rows only."""
    return browser.eval(
        "(() => { const t = document.getElementById('leaderboard');"
        f" const i = t.querySelector('th[data-col={column}]').cellIndex;"
        " return [...t.tBodies[0].rows].filter(r => !r.hidden).map(r => r.cells[i].getAttribute('data-v')); })()")


def test_index_loads_without_console_errors(browser, site, tmp_path):
    browser.open(site / "index.html")
    assert browser.errors() == []
    assert browser.eval("document.querySelectorAll('#leaderboard tbody tr').length") == ROWS
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
    assert browser.eval(visible) == ROWS
    browser.type_into("#filter-text", "blended")
    assert browser.eval(visible) == 4
    assert set(_column(browser, "attack")) == {"blended"}
    browser.eval("(() => { const s = document.querySelector('select[data-filter=defense]'); s.value = 'cleanclip';"
                 " s.dispatchEvent(new Event('change', {bubbles: true})); })()")
    assert browser.eval(visible) == 1
    assert f"1 of {ROWS}" in browser.eval("document.getElementById('shown').textContent")
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


def test_the_reference_row_has_no_rank_and_a_group_that_did_not_implant_is_not_ranked(browser, site):
    browser.open(site / "index.html")
    rank_of = ("(sel) => [...document.querySelectorAll(sel)].map(r => [r.dataset.attack, r.dataset.defense,"
               " r.querySelector('td.rank').getAttribute('data-v'), r.querySelector('td.rank').textContent.trim()])")
    references = browser.eval(f"({rank_of})('#leaderboard tr[data-role=reference]')")
    assert len(references) == 4 and all(v == "" and "reference" in text and not any(c.isdigit() for c in text)
                                        for _, _, v, text in references)
    wanet = browser.eval(f"({rank_of})('#leaderboard tr[data-attack=wanet][data-role=defense]')")
    assert wanet and all(v == "" and text == "did not implant" for _, _, v, text in wanet)
    ranked = browser.eval(f"({rank_of})('#leaderboard tr[data-attack=badnet][data-role=defense][data-status=ok]')")
    assert sorted(text for _, _, _, text in ranked) == ["1", "2"]  # cleanclip clearly first, finetune second
    assert browser.errors() == []


def test_the_matrix_comes_first_and_its_cells_lead_to_their_rows(browser, site):
    browser.open(site / "index.html")
    order = browser.eval("[...document.querySelectorAll('.setting-box, table.matrix-table, #defense-ranking, #attack-ranking, #leaderboard')]"
                         ".map(e => e.id || e.className)")
    assert order == ["matrix-table", "defense-ranking", "attack-ranking", "setting-1", "leaderboard"]
    header = browser.eval("[...document.querySelectorAll('table.matrix-table thead th')].map(t => t.textContent.trim())")
    assert header == ["attack \\\\ defense".replace("\\\\", "\\"), "none (reference)",
                      "cleanclip post-training", "finetune post-training", "unimodal post-training"]  # with the stage tag
    assert browser.eval("document.querySelectorAll('table.matrix-table td.mcell.top').length") == 3  # cleanclip, 3 attacks
    browser.click("table.matrix-table tbody tr:nth-child(2) td.mcell.top a")
    anchor = browser.eval("location.hash.slice(1)")
    assert anchor.startswith("row-") and browser.eval(f"document.getElementById({json.dumps(anchor)}).dataset.defense") == "cleanclip"
    assert browser.eval("document.querySelector('tr:target') !== null")
    assert browser.errors() == []


def test_the_detection_table_gives_both_metrics_in_every_cell(browser, site):
    browser.open(site / "index.html")
    cells = browser.eval("[...document.querySelectorAll('.detection-table tbody td')]"
                         ".map(td => [...td.querySelectorAll('.det-metric')].map(m => m.textContent.split(' ')[0]))")
    assert cells == [["AUROC", "TPR@1%FPR"]] * 4
    headers = browser.eval("[...document.querySelectorAll('.detection-table thead th')].map(t => t.textContent.trim())")
    assert headers[1:] == ["badnet 5%", "blended 5%"]
    assert browser.errors() == []


def test_every_gallery_image_loads(browser, site):
    for page in (site / "index.html", next((site / "attacks").glob("badnet-*.html"))):
        browser.open(page)
        sizes = browser.eval("[...document.querySelectorAll('figure.trigger img')].map(i => [i.complete, i.naturalWidth, i.width])")
        assert sizes and all(done and natural > 0 for done, natural, _ in sizes), sizes
        assert all(natural == 128 for _, natural, _ in sizes)  # 32 px enlarged 4 times
        assert browser.errors() == []
    browser.open(site / "index.html")
    assert len(browser.eval("[...document.querySelectorAll('figure.trigger img')]")) == 3 * 2  # the script-named attack has no plugin


@pytest.mark.parametrize("width", [1400, 390])
def test_no_page_scrolls_sideways(browser, site, width, tmp_path):
    pages = [site / "index.html", site / "add-defense.html", next((site / "cards").glob("*.html")),
             next((site / "attacks").glob("badnet-*.html")), next((site / "defenses").glob("cleanclip-*.html"))]
    browser.viewport(width)
    try:
        for page in pages:
            browser.open(page)
            scroll, viewport = browser.eval("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert scroll <= viewport, (page.name, scroll, viewport)
            assert browser.errors() == []
        browser.open(site / "index.html")
        browser.screenshot(tmp_path / f"index-{width}.png")
        assert (tmp_path / f"index-{width}.png").stat().st_size > 10_000
    finally:
        browser.call("Emulation.clearDeviceMetricsOverride")


def test_the_header_stays_visible_while_the_table_scrolls(browser, site):
    browser.viewport(1400, 500)
    try:
        browser.open(site / "index.html")
        box, header = browser.eval(
            "(() => { const w = document.querySelector('.table-wrap.tall'); w.scrollIntoView(); w.scrollTop = 400;"
            " return [w.getBoundingClientRect().top, w.querySelector('thead th').getBoundingClientRect().top]; })()")
        assert browser.eval("document.querySelector('.table-wrap.tall').scrollTop") > 0  # the table did scroll
        assert abs(header - box) <= 2
    finally:
        browser.call("Emulation.clearDeviceMetricsOverride")


def _search(browser: Browser, text: str) -> None:
    browser.eval(f"(() => {{ const i = document.getElementById('filter-text'); i.value = {json.dumps(text)};"
                 " i.dispatchEvent(new Event('input', {bubbles: true})); })()")


def test_search_by_field_and_the_state_in_the_url(browser, site):
    browser.open(site / "index.html")
    visible = "document.querySelectorAll('#leaderboard tbody tr:not([hidden])').length"
    browser.type_into("#filter-text", "defense:clean")
    assert browser.eval(visible) == 5 and set(_column(browser, "defense")) == {"cleanclip"}
    _search(browser, "defense:clean seed:1")
    assert browser.eval(visible) == 5
    _search(browser, "80")
    assert browser.eval(visible) == 0  # words never match the numbers
    _search(browser, "attack:badnet")
    browser.click("#leaderboard th[data-col=asr] button")
    url = browser.eval("location.href")
    assert "q=attack%3Abadnet" in url and "sort=asr" in url and "dir=ascending" in url
    browser.navigate(url)
    assert browser.eval(visible) == 4 and browser.eval("document.getElementById('filter-text').value") == "attack:badnet"
    assert browser.eval("document.querySelector('#leaderboard th[data-col=asr]').getAttribute('aria-sort')") == "ascending"
    assert browser.errors() == []
