"""
A headless Chromium driven over the Chrome DevTools protocol, on the test's reactor.

Chromium is started with C{--remote-debugging-pipe}: it reads protocol commands from
its fd 3 and writes replies and events to its fd 4 (JSON, each message ended by a NUL).
Twisted's C{spawnProcess} maps those descriptors, so the browser runs alongside the
in-process streamd server without a thread, a websocket client or a driver binary.

Every wait here is bounded (C{within}); nothing sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Any

import pytest
from twisted.internet import defer, protocol, reactor

#: None where it is not on PATH: the browser tests are then skipped (L{chromium_fixture})
CHROMIUM = shutil.which("chromium")

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--remote-debugging-pipe",
    "--window-size=1280,900",
]

TIMEOUT = 20.0

#: Where a failing browser test leaves a screenshot of its page (C{STREAMD_TEST_OUTPUT}
#: to choose another place).
OUTPUT = os.environ.get("STREAMD_TEST_OUTPUT", "test-output")


def available() -> bool:
    return CHROMIUM is not None


class CDPError(Exception):
    """A protocol command failed, or the browser went away."""


class _Pipe(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.next_id = 0
        self.waiting: dict[int, defer.Deferred] = {}
        self.done = False
        self.watchers: list[defer.Deferred] = []
        self.stderr = b""

    def wait_ended(self, seconds: float) -> defer.Deferred:
        d = defer.Deferred()
        if self.done:
            d.callback(None)
        else:
            self.watchers.append(d)
        return d.addTimeout(seconds, reactor)

    def send(self, method: str, params: dict | None = None,
             session: str | None = None) -> defer.Deferred:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method,
                                   "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        d = self.waiting[self.next_id] = defer.Deferred()
        self.transport.writeToChild(3, json.dumps(message).encode() + b"\0")
        return d

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr = (self.stderr + data)[-20000:]
            return
        if fd != 4:
            return
        self.buffer += data
        while b"\0" in self.buffer:
            raw, self.buffer = self.buffer.split(b"\0", 1)
            message = json.loads(raw)
            d = self.waiting.pop(message.get("id"), None)
            if d is None:
                continue  # an event: nothing here subscribes to any
            if "error" in message:
                d.errback(CDPError(message["error"]))
            else:
                d.callback(message.get("result", {}))

    def processEnded(self, reason) -> None:
        for d in self.waiting.values():
            d.errback(CDPError("chromium exited"))
        self.waiting.clear()
        self.done = True
        for d in self.watchers:
            d.callback(None)
        self.watchers.clear()


class Browser:
    """
    One headless Chromium with a fresh profile, and one page in it.

    @ivar flags: its command-line flags; a test may add some before L{start} (such as
        C{--ignore-certificate-errors} for a server with a self-signed certificate).
    """

    def __init__(self) -> None:
        self.flags = list(FLAGS)
        self.pipe = _Pipe()
        self.profile = tempfile.mkdtemp(prefix="streamd-chromium-")
        self.session: str | None = None

    async def start(self) -> None:
        args = [CHROMIUM, *self.flags, f"--user-data-dir={self.profile}", "about:blank"]
        reactor.spawnProcess(self.pipe, CHROMIUM, args, env=os.environ.copy(),
                             childFDs={0: "w", 1: "r", 2: "r", 3: "w", 4: "r"})
        await self.command("Browser.getVersion")

    async def command(self, method: str, params: dict | None = None,
                      page: bool = False, seconds: float = TIMEOUT) -> dict:
        d = self.pipe.send(method, params, self.session if page else None)
        return await d.addTimeout(seconds, reactor)

    async def open(self, url: str) -> None:
        """Open C{url} in a new tab (a real navigation: the browser's own headers)."""
        target = await self.command("Target.createTarget", {"url": url})
        attached = await self.command("Target.attachToTarget",
                                      {"targetId": target["targetId"], "flatten": True})
        self.session = attached["sessionId"]

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaiting a promise)."""
        result = await self.command(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            page=True)
        if "exceptionDetails" in result:
            raise CDPError(result["exceptionDetails"])
        return result["result"].get("value")

    async def screenshot(self, path: str) -> None:
        import base64

        shot = await self.command("Page.captureScreenshot", {"format": "png"}, page=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))

    @contextlib.asynccontextmanager
    async def screenshot_on_failure(self, name: str):
        """
        On an exception inside the block, save a screenshot of the page as
        C{OUTPUT/NAME.png} and name the file in the failure's output.
        """
        try:
            yield
        except BaseException as failure:
            os.makedirs(OUTPUT, exist_ok=True)
            path = os.path.abspath(os.path.join(OUTPUT, name + ".png"))
            try:
                await self.screenshot(path)
                note = f"screenshot of the page: {path}"
            except Exception as e:
                note = f"no screenshot of the page: {e!r}"
            print(note)  # pytest shows a failing test's output
            if hasattr(failure, "add_note"):
                failure.add_note(note)
            raise

    @contextlib.asynccontextmanager
    async def running(self, name: str):
        """
        Start the browser for the block and close it after, with a screenshot named
        C{name} should the block fail (L{screenshot_on_failure}).
        """
        await self.start()
        try:
            async with self.screenshot_on_failure(name):
                yield self
        finally:
            await self.close()

    async def close(self) -> None:
        if self.pipe.transport is not None and not self.pipe.done:
            try:
                await self.command("Browser.close", seconds=5)
                await self.pipe.wait_ended(10)
            except Exception:
                # Not gone by itself: make sure no browser outlives the test.
                self.pipe.transport.signalProcess("KILL")
                await self.pipe.wait_ended(10)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(name="chromium")
def chromium_fixture():
    """C{chromium}: a headless Chromium (skipped where it is missing, a failure in CI)."""
    if not available():
        if os.environ.get("CI"):
            pytest.fail("chromium is not on PATH: .ci/run installs it", pytrace=False)
        pytest.skip("chromium is not on PATH (on Debian: apt-get install chromium)")
    return Browser()
