"""Open a page in a real headless Chromium and ask it what it drew, in plain Python.

Drives the browser over the DevTools protocol on `--remote-debugging-pipe` (JSON messages
separated by NUL bytes on file descriptors 3 and 4): no websocket or driver package. It
collects console errors and uncaught exceptions, evaluates an expression in the page and
takes a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class BrowserError(RuntimeError):
    pass


@dataclass
class PageResult:
    value: object                        # what the expression returned (JSON)
    errors: list[str] = field(default_factory=list)   # console errors, uncaught exceptions
    screenshot: bytes = b""


class HeadlessChromium:
    def __init__(self, binary: str, timeout_s: float = 40.0):
        self.timeout_s = timeout_s
        self._profile = tempfile.TemporaryDirectory(prefix="dermtwin-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--disable-background-networking",
                "--hide-scrollbars", f"--user-data-dir={self._profile.name}",
                "--remote-debugging-pipe", "about:blank"]
        self._proc = subprocess.Popen(
            # bash, not sh: dash cannot redirect from descriptors above 9
            ["bash", "-c", f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}', *args],
            pass_fds=(to_browser_r, from_browser_w), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    # -- protocol --------------------------------------------------------------------
    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message: dict = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            event = self._read()
            if event.get("method") == method:
                return event
            self.events.append(event)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            if not ready:
                raise BrowserError(f"no answer from chromium within {self.timeout_s} s")
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise BrowserError(f"chromium exited (code {self._proc.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    # -- one page ------------------------------------------------------------------------
    def open(self, url: str, expression: str, width: int = 1040, height: int = 1800
             ) -> PageResult:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable", session=session)
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                  session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_event("Page.loadEventFired")
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session=session)
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating the check: {result['exceptionDetails']}")
        shot = self.call("Page.captureScreenshot", {"format": "png"}, session=session)
        page = PageResult(result["result"].get("value"),
                          screenshot=base64.b64decode(shot["data"]))
        for event in self.events:
            if event.get("sessionId") != session:
                continue
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                page.errors.append("exception: " + details.get("exception", {}).get(
                    "description", details.get("text", "")))
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error",
                                                                                  "assert"):
                page.errors.append("console.error: " + " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                page.errors.append(f"log: {params['entry']['text']} "
                                   f"({params['entry'].get('url', '')})")
        self.events = [e for e in self.events if e.get("sessionId") != session]
        self.call("Target.closeTarget", {"targetId": target})
        return page

    def close(self) -> None:
        try:
            if self._proc.poll() is None:
                try:
                    self.call("Browser.close")
                except (BrowserError, OSError):
                    pass
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)
            self._profile.cleanup()

    def __enter__(self) -> HeadlessChromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# Per plot: how many of its data marks have a non-empty box once laid out.
PLOTS_DRAWN_JS = """JSON.stringify([...document.querySelectorAll('svg.plot')].map(svg => ({
  id: svg.dataset.plot,
  width: svg.getBoundingClientRect().width,
  marks: svg.querySelectorAll('.data').length,
  drawn: [...svg.querySelectorAll('.data')].filter(e => {
      const b = e.getBBox(); return b.width > 0 || b.height > 0; }).length})))"""


def save_screenshot(page: PageResult, path: Path) -> None:
    path.write_bytes(page.screenshot)
