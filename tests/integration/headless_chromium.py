"""Headless Chromium for tests: load a page, collect its console errors and requests, evaluate an
expression, take a full-page screenshot, and count bordered tiles in it.

It speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (the browser reads
commands on fd 3 and writes replies and events on fd 4, NUL-terminated JSON), so it needs no
websocket library and opens no port.

``require_chromium()`` finds the browser; where it is missing the test skips, except when
``CLUSTERKIT_REQUIRE_CHROMIUM=1`` (CI): then it fails, so a missing browser never passes silently.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ERROR_CONSOLE_TYPES = ("error", "assert")

#: The child re-numbers the two pipe ends to fds 3 and 4, where Chromium expects them.
_EXEC_ON_FDS_3_4 = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                   "os.execvp(sys.argv[3], sys.argv[3:])"


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH."""
    return next((path for path in map(shutil.which, CANDIDATES) if path), None)


def require_chromium() -> str:
    """The browser's path; skip the test without one (fail under CLUSTERKIT_REQUIRE_CHROMIUM=1)."""
    import pytest

    binary = find_chromium()
    if binary is None:
        reason = f"no headless browser on PATH ({', '.join(CANDIDATES)}); scripts/ensure-chromium.sh installs one"
        if os.environ.get("CLUSTERKIT_REQUIRE_CHROMIUM") == "1":
            pytest.fail(f"CLUSTERKIT_REQUIRE_CHROMIUM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    return binary


@dataclass
class PageLoad:
    """What loading one page gave: console/JS/network errors, every URL requested, the value of
    ``evaluate`` (None without one) and a full-page PNG screenshot."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: object = None
    screenshot: bytes = b""


class Browser:
    """One headless Chromium process and its DevTools pipe."""

    def __init__(self, binary: str, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="ck-chromium-")
        self._stderr = open(os.path.join(self._profile, "stderr.log"), "wb")  # noqa: SIM115 - closed in close()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        argv = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--remote-debugging-pipe", f"--user-data-dir={self._profile}", "--no-first-run",
                "--no-default-browser-check", "--mute-audio", "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen([sys.executable, "-c", _EXEC_ON_FDS_3_4, str(to_browser_r), str(from_browser_w),
                                      *argv], pass_fds=(to_browser_r, from_browser_w),
                                     stdout=subprocess.DEVNULL, stderr=self._stderr)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._messages: queue.Queue = queue.Queue()
        self._events: list[dict] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and wait for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._get(deadline, f"the reply to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def wait_event(self, method: str, timeout: float) -> dict:
        """The first event ``method`` (already received or arriving within ``timeout`` s)."""
        for event in self._events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._get(deadline, f"the event {method}")
            self._events.append(event)
            if event.get("method") == method:
                return event

    def settle(self, quiet: float, limit: float) -> None:
        """Keep collecting events until none came for ``quiet`` s (at most ``limit`` s)."""
        end = time.monotonic() + limit
        while time.monotonic() < end:
            try:
                event = self._messages.get(timeout=quiet)
            except queue.Empty:
                return
            if event is None:
                raise RuntimeError("chromium exited")
            self._events.append(event)

    def _get(self, deadline: float, what: str) -> dict:
        try:
            message = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError(f"chromium sent no {what} within {self.timeout:g}s") from None
        if message is None:
            raise RuntimeError(f"chromium exited (code {self.proc.poll()}) before {what}: {self.stderr_tail()}")
        return message

    def stderr_tail(self, lines: int = 20) -> str:
        """The last lines Chromium wrote to stderr (why it would not start, usually)."""
        try:
            with open(self._stderr.name, "rb") as handle:
                return b"\n".join(handle.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    @property
    def events(self) -> list[dict]:
        return list(self._events)

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)


def load_page(binary: str, url: str, *, width: int = 1400, height: int = 900, evaluate: str | None = None,
              timeout: float = 60.0) -> PageLoad:
    """Open ``url`` in a fresh headless Chromium, wait for the load event and for the page to go
    quiet, and report its errors, requests, ``evaluate``'s value and a full-page screenshot."""
    browser = Browser(binary, timeout=timeout)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        navigated = browser.call("Page.navigate", {"url": url}, session)
        if navigated.get("errorText"):
            raise RuntimeError(f"navigating to {url} failed: {navigated['errorText']}")
        browser.wait_event("Page.loadEventFired", timeout)
        browser.settle(quiet=1.5, limit=15.0)
        value = None
        if evaluate is not None:
            value = browser.call("Runtime.evaluate", {"expression": evaluate, "returnByValue": True,
                                                      "awaitPromise": True}, session)["result"].get("value")
        size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": max(width, size["width"]), "height": size["height"], "scale": 1}
        shot = browser.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                       "clip": clip}, session)["data"]
        events = browser.events
    finally:
        browser.close()
    return PageLoad(errors=page_errors(events), requests=[e["params"]["request"]["url"] for e in events
                                                           if e.get("method") == "Network.requestWillBeSent"],
                    value=value, screenshot=base64.b64decode(shot))


def page_errors(events: list[dict]) -> list[str]:
    """Console errors and asserts, uncaught exceptions, and error log entries (failed loads, CSP)."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ERROR_CONSOLE_TYPES:
            args = params.get("args", [])
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in args))
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("exception: " + str(details.get("exception", {}).get("description") or details.get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            errors.append(f"log ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}".strip())
    return errors


def count_tiles(png: bytes, rgb: tuple[int, int, int], *, tolerance: int = 2, min_side: int = 40) -> int:
    """How many bordered boxes of colour ``rgb`` the screenshot shows: connected regions (8-neighbour)
    of that colour whose bounding box is at least ``min_side`` px each way and mostly hollow (a
    border, not a blob of the same colour in a picture)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    mask = (np.abs(pixels - np.array(rgb)) <= tolerance).all(axis=2)
    unseen = set(zip(*np.nonzero(mask)))
    count = 0
    while unseen:
        stack = [unseen.pop()]
        ys, xs = [], []
        while stack:
            y, x = stack.pop()
            ys.append(y)
            xs.append(x)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    neighbour = (y + dy, x + dx)
                    if neighbour in unseen:
                        unseen.remove(neighbour)
                        stack.append(neighbour)
        height, width = max(ys) - min(ys) + 1, max(xs) - min(xs) + 1
        if height >= min_side and width >= min_side and len(ys) < 0.5 * height * width:
            count += 1
    return count
