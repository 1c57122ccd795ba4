"""The explorer in a real browser: a live ``streamlit run`` server and headless Chromium.

Starts ``streamlit run app/Home.py --server.headless true`` on a free localhost port against a
folder of tiny trained runs (tests/_app_runs.py), waits for ``/_stcore/health``, then loads
every page in headless Chromium and checks that it rendered: the page title, its main content,
no "Traceback", no "Error", no exception or error box, and a "Download PNG" button under the
figures. Screenshots, at a 1280 x 720 window stretched to the page's height, go to
``test-artifacts/screenshots/`` (gitignored) for a human to look at.

Chromium is driven over the DevTools protocol (``--remote-debugging-port``, with the
``websockets`` client Streamlit itself depends on) rather than with ``--screenshot`` /
``--dump-dom``: those return after a virtual-time budget, which Streamlit's websocket-driven
rendering does not advance, so a cold page came back blank or half drawn. Here each page is
polled until Streamlit reports its script finished and every image has loaded.

A second test starts the explorer on an empty runs folder, clicks "Train the demo runs",
follows the progress bar until the real demo runs are trained and listed, then shoots every
page on them (``demo-*.png``); a third shoots every page on the CE / IPS pair shipped in
``results/`` as a fresh clone shows it (``shipped-*.png``).

Without Chromium the test is skipped, unless ``IPSKIT_REQUIRE_BROWSER=1`` (CI) makes that a
failure. Install it with ``make browser`` (Debian's ``chromium`` package).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from _app_runs import tiny_runs

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO / "test-artifacts" / "screenshots"
WIDTH, HEIGHT = 1280, 720  # a projector's or a laptop's window
# url path -> (page title, text the rendered page must contain)
PAGES = {
    "": ("IPS explorer", "run(s) under"),
    "Swap_playground": ("Swap playground", "swapped cells"),
    "Logit_smoothing": ("Logit smoothing", "mean max-probability"),
    "Grad-CAM": ("Grad-CAM", "Grad-CAM layer"),
    "Ablation": ("Ablation", "Runs behind a cell"),
    "Runs": ("Runs", "Curves"),
}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--window-size={WIDTH},{HEIGHT}",
]
PAGE_TIMEOUT = 120  # s; a cold page imports torch and trains nothing, but CI machines are slow
STATE_JS = """(() => {
  const app = document.querySelector('[data-test-script-state]');
  const h1 = document.querySelector('h1');
  return {state: app ? app.getAttribute('data-test-script-state') : null,
          title: document.title, h1: h1 ? h1.innerText.trim() : null,
          busy: document.querySelectorAll('[data-testid="stSpinner"], [data-testid="stSkeleton"]').length,
          images: Array.from(document.images).every(i => i.complete),
          errors: document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]').length,
          height: Math.max(...Array.from(document.querySelectorAll('[data-testid="stMain"], [data-testid="stSidebarContent"]'))
                           .map(e => e.scrollHeight), 0),
          text: document.body ? document.body.innerText : ''};
})()"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        reason = (
            "chromium not found: the browser test needs headless Chromium (`make browser`, "
            "or apt-get install chromium)"
        )
        if os.environ.get("IPSKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; IPSKIT_REQUIRE_BROWSER=1 makes this a failure")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(root: Path, log: Path, results: Path | None = None, cwd: Path = REPO):
    """``streamlit run app/Home.py`` on a free localhost port reading runs from ``root`` (and
    the shipped runs from ``results``; none by default), started in ``cwd``; yields its base
    URL once ``/_stcore/health`` answers."""
    port = free_port()
    env = {
        **os.environ,
        "IPSKIT_RUNS": str(root),
        "IPSKIT_RESULTS": str(results or ""),
        "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                str(REPO / "app" / "Home.py"),
                "--server.headless",
                "true",
                "--server.port",
                str(port),
                "--server.address",
                "127.0.0.1",
                "--server.fileWatcherType",
                "none",
            ],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit never became healthy: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()  # a test server: no state to save, so do not wait long
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory, chromium):
    """A live explorer on localhost reading the tiny runs; yields its base URL."""
    root = tiny_runs(tmp_path_factory)
    with streamlit_server(root, tmp_path_factory.mktemp("streamlit") / "server.log") as url:
        yield url


class Browser:
    """Headless Chromium driven over the DevTools protocol (navigate, evaluate, screenshot)."""

    def __init__(self, binary: str):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="ipskit-chromium-")
        self.proc = subprocess.Popen(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(
            connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        )
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:  # skip events until our answer
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def state(self) -> dict:
        return self.call("Runtime.evaluate", expression=STATE_JS, returnByValue=True)["result"][
            "value"
        ]

    def load(self, url: str, title: str, timeout: float = PAGE_TIMEOUT) -> dict:
        """Open ``url`` and wait until Streamlit has finished the page and its images loaded."""
        self.call("Page.navigate", url=url)
        deadline, s = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            s = self.state()
            if s["state"] == "notRunning" and s["h1"] == title and not s["busy"] and s["images"]:
                time.sleep(0.5)  # charts and data grids draw just after the script ends
                return self.state()
            time.sleep(0.25)
        raise AssertionError(
            f"{url} did not finish rendering in {timeout} s: {s.get('state')}, "
            f"title {s.get('h1')!r}, text {s.get('text', '')[:300]!r}"
        )

    def screenshot(self, path: Path, height: int) -> None:
        """The whole page at the window's width: the viewport is stretched to the content's
        height first."""
        h = int(min(height + 40, 8000))
        if h > HEIGHT:
            self.call(
                "Emulation.setDeviceMetricsOverride",
                width=WIDTH,
                height=h,
                deviceScaleFactor=1,
                mobile=False,
            )
            time.sleep(0.8)  # let Streamlit re-lay out the charts for the new size
        shot = self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        if h > HEIGHT:
            self.call("Emulation.clearDeviceMetricsOverride")

    def click_button(self, label: str, then: str, timeout: float = PAGE_TIMEOUT) -> dict:
        """Click the button labelled ``label`` and wait until the page shows ``then``."""
        self.call(
            "Runtime.evaluate",
            expression=(
                "Array.from(document.querySelectorAll('button'))"
                f".find(b => b.innerText.trim() === {json.dumps(label)}).click()"
            ),
        )
        deadline, s = time.monotonic() + timeout, {}
        while time.monotonic() < deadline:
            s = self.state()
            if s["state"] == "notRunning" and then in s["text"] and s["images"]:
                time.sleep(0.5)
                return self.state()
            time.sleep(0.25)
        raise AssertionError(
            f"{label!r} did not lead to {then!r} in {timeout} s: {s.get('text', '')[:300]!r}"
        )

    def click_tab(self, label: str) -> dict:
        """Open the tab named ``label`` and return the page state once it settled."""
        self.call(
            "Runtime.evaluate",
            expression=(
                "Array.from(document.querySelectorAll('[role=\"tab\"]'))"
                f".find(t => t.innerText.trim() === {json.dumps(label)}).click()"
            ),
        )
        time.sleep(1.0)
        return self.state()

    def close(self) -> None:
        if getattr(self, "stack", None) is not None:
            self.stack.close()
        self.proc.terminate()
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(chromium):
    b = Browser(chromium)
    yield b
    b.close()


FIGURES = {
    "Swap_playground",
    "Logit_smoothing",
    "Grad-CAM",
    "Ablation",
    "Runs",
}  # pages with a figure
# tabs shot on their own: page -> (tab, text it must show)
TABS = {
    "Grad-CAM": [("Swapped pair", "teacher"), ("Your image", "5MB per file")],
    "Runs": [("Evaluation", "")],
}


def shoot_every_page(browser, url: str, prefix: str, pages: dict = PAGES) -> list[str]:
    """Load every page, shoot it (and its tabs in TABS) as ``<prefix><page>.png``; returns the
    problems found."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    problems = []
    for path, (title, marker) in pages.items():
        s = browser.load(f"{url}/{path}", title)
        name = prefix + (path or "Home")
        browser.screenshot(SHOTS / f"{name}.png", s["height"])
        text = s["text"]
        checks = {
            "browser title": s["title"] == f"{title} · ipskit",
            f"content {marker!r}": marker in text,
            "no Traceback": "Traceback" not in text,
            "no Error": "Error" not in text,
            "no error box": s["errors"] == 0,
            "Download PNG": path not in FIGURES
            or "Download PNG" in text
            or "No sweep table" in text,
        }
        for tab, tab_marker in TABS.get(path, []):
            t = browser.click_tab(tab)
            browser.screenshot(SHOTS / f"{name}-{tab.replace(' ', '_')}.png", t["height"])
            checks[f"tab {tab}: no error box"] = t["errors"] == 0
            checks[f"tab {tab}: {tab_marker!r}"] = tab_marker in t["text"]
        problems += [f"{name}: {what}" for what, ok in checks.items() if not ok]
        assert (SHOTS / f"{name}.png").stat().st_size > 10_000, f"{name}: screenshot looks empty"
    return problems


def test_every_page_renders_in_headless_chromium(server, browser):
    problems = shoot_every_page(browser, server, "")
    assert not problems, problems


PROGRESS_JS = """(() => {
  const p = document.querySelector('[data-testid="stProgress"]');
  const bar = p && p.querySelector('[role="progressbar"]');
  return p ? {text: p.innerText, value: bar ? Number(bar.getAttribute('aria-valuenow')) : null} : null;
})()"""


def test_no_runs_the_demo_button_trains_with_a_live_progress_bar(tmp_path, browser):
    """A fresh machine: the page says there are no runs, and its button trains the real demo
    runs (two 15-epoch runs on digits, about 45 s on 2 idle cores) while a bar moves."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    root = tmp_path / "runs"
    with streamlit_server(root, tmp_path / "server.log") as url:
        s = browser.load(url, "IPS explorer")
        assert "No runs found" in s["text"] and s["errors"] == 0
        browser.call(
            "Runtime.evaluate",
            expression=(
                "Array.from(document.querySelectorAll('button'))"
                ".find(b => b.innerText.includes('Train the demo runs')).click()"
            ),
        )
        values, deadline = [], time.monotonic() + 600
        while time.monotonic() < deadline:
            p = browser.call("Runtime.evaluate", expression=PROGRESS_JS, returnByValue=True)[
                "result"
            ].get("value")
            if p is None and values:
                break  # the bar is gone: training finished and the page re-ran
            if p is not None:
                # "Starting…", "Training the demo runs: epoch k of n", then "Trained n epochs"
                assert any(
                    t in p["text"]
                    for t in ("Starting", "Training the demo runs: epoch", "Trained ")
                ), p
                if p["value"] is not None:
                    values.append(p["value"])
                if len(values) == 3:
                    browser.screenshot(SHOTS / "Home-training-demo.png", 900)
            time.sleep(1)
        assert len(set(values)) >= 3, f"the bar did not move: {values}"
        assert values == sorted(values), f"the bar went backwards: {values}"
        s = browser.load(url, "IPS explorer")
        browser.screenshot(SHOTS / "Home-after-demo.png", s["height"])
        assert (
            "No runs found" not in s["text"] and "2 run(s) under" in s["text"] and s["errors"] == 0
        )
        assert (root / "demo" / "ce" / "summary.json").is_file()
        assert (root / "demo" / "ips" / "summary.json").is_file()
        # every page on the real demo runs (no sweep yet: the Ablation page offers one)
        pages = {**PAGES, "Ablation": ("Ablation", "Train this sweep")}
        problems = shoot_every_page(browser, url, "demo-", pages)
        assert not problems, problems


SHIPPED_PAGES = {  # page: (title, what it must show on the shipped CIFAR-10 pair)
    "": ("IPS explorer", "shipped with ipskit"),
    "Swap_playground": ("Swap playground", "teacher"),
    "Logit_smoothing": ("Logit smoothing", "results/cifar10-resnet8-cpu/ips"),
    "Grad-CAM": ("Grad-CAM", "results/cifar10-resnet8-cpu/ce"),
    "Ablation": ("Ablation", "Train this sweep"),
    "Runs": ("Runs", "Curves"),
}


def test_fresh_clone_shows_the_shipped_natural_image_pair(tmp_path, browser):
    """No runs of one's own, no dataset, no network: the pages show the CE / IPS pair shipped
    in results/ on its CIFAR-10 test sample (what ``make app`` shows on a fresh clone)."""
    # started outside the checkout, so that relative dataset paths (data/cifar10) are missing
    with streamlit_server(
        tmp_path / "runs", tmp_path / "server.log", results=REPO / "results", cwd=tmp_path
    ) as url:
        problems = shoot_every_page(browser, url, "shipped-", SHIPPED_PAGES)
        s = browser.load(f"{url}/Swap_playground", "Swap playground")
        if "airplane" not in s["text"]:
            problems.append("Swap_playground: CIFAR-10 classes")
        # a clear teacher / student example on demand
        s = browser.click_button("Most lopsided pair", then="most lopsided of 64 random pairs")
        browser.screenshot(SHOTS / "shipped-Swap_playground-lopsided.png", s["height"])
        if s["errors"] or "drew a swap:" not in s["text"]:
            problems.append("Swap_playground: the most lopsided pair, swapped, without an error")
        assert not problems, problems
