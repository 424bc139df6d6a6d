"""A headless Chromium driven over the DevTools protocol (CDP) on a pipe: load a page, run JavaScript,
take screenshots and collect every JavaScript error. Used by the browser tests and for README screenshots.

Nothing is downloaded: the browser is a local one (``plots.find_chromium``, Debian's ``/usr/bin/chromium``).
``--remote-debugging-pipe`` makes Chromium read NUL-terminated JSON commands on fd 3 and write replies and
events on fd 4, so no port is opened and no websocket library is needed.
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
from typing import Any

from .plots import find_chromium

__all__ = ["Browser", "BrowserError", "find_chromium"]

# The flags of ENVIRONMENT.md, plus WebGL in software (plotly's 3-D scenes need it when there is no GPU).
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
    "--disable-dev-shm-usage", "--enable-unsafe-swiftshader", "--use-angle=swiftshader", "--hide-scrollbars",
    "--mute-audio", "--remote-debugging-pipe",
)

_MOVE_FDS = """
import fcntl, os, sys
r, w = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])
os.close(int(sys.argv[1])); os.close(int(sys.argv[2]))
os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)
os.execv(sys.argv[3], sys.argv[3:])
"""


class BrowserError(RuntimeError):
    pass


class Browser:
    """``with Browser() as b: b.open(url); b.evaluate("1+1"); png = b.screenshot()``; ``b.errors`` lists
    uncaught exceptions, ``console.error`` calls and error log entries (failed loads included)."""

    def __init__(self, *, path: str | None = None, width: int = 1500, height: int = 1000, timeout_s: float = 60.0):
        self.path = path or find_chromium()
        if self.path is None:
            raise BrowserError("no Chromium/Chrome found on PATH or at /usr/bin/chromium (apt-get install -y chromium)")
        if width <= 0 or height <= 0 or timeout_s <= 0:
            raise ValueError(f"width, height and timeout_s must be > 0, got {width=}, {height=}, {timeout_s=}")
        self.width, self.height, self.timeout_s = width, height, timeout_s
        self.errors: list[str] = []
        self._events: queue.Queue[dict] = queue.Queue()
        self._replies: dict[int, queue.Queue[dict]] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._session: str | None = None
        self._proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ life cycle

    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="chromium-profile-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium wants the pipe on fds 3 and 4 exactly; a tiny Python moves them there and execs the browser
        # (thread-safe, unlike preexec_fn).
        args = [*FLAGS, f"--user-data-dir={self._profile}", f"--window-size={self.width},{self.height}", "about:blank"]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _MOVE_FDS, str(to_chrome_r), str(from_chrome_w), self.path, *args],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self._session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                      session=False)["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.send("Browser.close", session=False, timeout_s=5)
                self._proc.wait(timeout=10)
            except (BrowserError, subprocess.TimeoutExpired, OSError):
                self._proc.kill()
                self._proc.wait()
        for fd in (self._to_chrome,):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def _read(self) -> None:
        buf = b""
        with os.fdopen(self._from_chrome, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 16):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for raw in messages:
                    self._dispatch(json.loads(raw))
        self._events.put({"method": "_closed"})

    def _dispatch(self, msg: dict) -> None:
        if "id" in msg:
            with self._lock:
                box = self._replies.get(msg["id"])
            if box is not None:
                box.put(msg)
            return
        method, params = msg.get("method", ""), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params.get("exceptionDetails", {})
            self.errors.append(f"uncaught: {d.get('exception', {}).get('description') or d.get('text')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append("console.error: " + " ".join(str(a.get("value", a.get("description", "")))
                                                           for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            e = params["entry"]
            self.errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
        self._events.put(msg)

    def send(self, method: str, params: dict | None = None, *, session: bool = True,
             timeout_s: float | None = None) -> dict[str, Any]:
        """One CDP command; its result, or ``BrowserError`` with the protocol's message."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            box: queue.Queue[dict] = queue.Queue()
            self._replies[ident] = box
        msg = {"id": ident, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        try:
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
            reply = box.get(timeout=timeout_s or self.timeout_s)
        except (OSError, queue.Empty) as exc:
            raise BrowserError(f"{method}: no reply from Chromium ({type(exc).__name__})") from exc
        finally:
            with self._lock:
                self._replies.pop(ident, None)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # ------------------------------------------------------------------ pages

    def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        while not self._events.empty():
            self._events.get_nowait()
        result = self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def wait_for_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self._events.get(timeout=left)
            except queue.Empty:
                break
            if msg.get("method") == method:
                return msg.get("params", {})
            if msg.get("method") == "_closed":
                raise BrowserError(f"Chromium exited while waiting for {method}")
        raise BrowserError(f"no {method} within {self.timeout_s:g} s")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited); a thrown error raises ``BrowserError``."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            d = result["exceptionDetails"]
            raise BrowserError(f"JavaScript error: {d.get('exception', {}).get('description') or d.get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout_s: float | None = None) -> Any:
        """Poll ``expression`` until it is truthy; its value (``true`` for an object, which cannot be copied out)."""
        deadline = time.monotonic() + (timeout_s or self.timeout_s)
        wrapped = f"(() => {{ const v = ({expression}); return v !== null && typeof v === 'object' ? true : v; }})()"
        while True:
            value = self.evaluate(wrapped)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.1)

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        """PNG of the viewport, or of ``clip`` ({x, y, width, height} in page pixels) anywhere on the page."""
        params: dict[str, Any] = {"format": "png"}
        if clip is not None:
            params.update(clip={**clip, "scale": 1}, captureBeyondViewport=True)
        return base64.b64decode(self.send("Page.captureScreenshot", params)["data"])

    def full_page_screenshot(self) -> bytes:
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        width = self.evaluate("Math.ceil(document.documentElement.scrollWidth)")
        return self.screenshot({"x": 0, "y": 0, "width": width, "height": height})
