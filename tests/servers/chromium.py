"""Headless Chromium driven over the DevTools protocol (CDP), with aiohttp's WebSocket client.

Debian's ``chromium`` (``apt-get install chromium``; .ci/run installs it). No driver, no npm:
the browser is started with ``--remote-debugging-port=0``, says where it listens on stderr
(``DevTools listening on ws://...``), and one page target is attached in flat mode, so every
command and event of the page carries its ``sessionId`` over the browser's one socket.

    async with browser() as page:
        await page.navigate(url)
        await page.wait_for("document.querySelector('#model option')")
        await page.evaluate("document.querySelector('#send').click()")

``page.requests`` holds the requests the page sent (``Network.requestWillBeSent``, bodies
included) and ``page.errors`` the uncaught exceptions and console errors, so a test can assert
what the page did on the wire and that its script did not fail.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")


def chromium_or_skip() -> str:
    """The Chromium binary; without one the test is skipped, except in CI (CI set), where it fails."""
    for name in ("chromium", "chromium-browser"):
        if found := shutil.which(name):
            return found
    message = "chromium is not installed (apt-get install -y chromium; .ci/run does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class BrowserError(AssertionError):
    """A DevTools command failed, or the page did not get where a test waited for it to."""


class Page:
    """One attached page target: commands, JavaScript evaluation, waiting, screenshots."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = iter(range(1, 1 << 62))
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.session_id: str | None = None
        self.requests: list[dict[str, Any]] = []  # Network.requestWillBeSent's `request` objects
        self.errors: list[str] = []
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                future = self._pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._event(data.get("method", ""), data.get("params", {}))
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"])
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", "?"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"{params['entry'].get('text')} ({params['entry'].get('url', '')})")

    async def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        """One DevTools command (to the page unless ``session`` is false); its result, or BrowserError."""
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session and self.session_id:
            message["sessionId"] = self.session_id
        future = self._pending[ident] = asyncio.get_running_loop().create_future()
        await self._ws.send_str(json.dumps(message))
        reply = await asyncio.wait_for(future, 30)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited); a thrown error is BrowserError."""
        result = await self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(f"{expression!r} threw: {details.get('exception', {}).get('description', details)}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout_s: float = 10.0, every_s: float = 0.01) -> Any:
        """Poll ``expression`` until it is truthy; its value. BrowserError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout_s} s waiting for {expression}")
            await asyncio.sleep(every_s)

    async def navigate(self, url: str, timeout_s: float = 15.0) -> None:
        """Load ``url`` and wait until its document (and deferred scripts) finished loading."""
        result = await self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url}: {result['errorText']}")
        # The old document can still be complete for a moment: wait for the new one by its address.
        loaded = f"location.href === new URL({json.dumps(url)}).href && document.readyState === 'complete'"
        await self.wait_for(loaded, timeout_s)

    async def fill(self, selector: str, value: str) -> None:
        """Set a form field's value as typing would (an `input` event follows)."""
        await self.evaluate(
            f"(() => {{ const el = document.querySelector({json.dumps(selector)});"
            f" el.value = {json.dumps(value)}; el.dispatchEvent(new Event('input', {{bubbles: true}})); }})()"
        )

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def text(self, selector: str) -> str:
        """The text of the LAST element matching ``selector`` ('' when none does)."""
        return await self.evaluate(
            f"(() => {{ const all = document.querySelectorAll({json.dumps(selector)});"
            f" return all.length ? all[all.length - 1].textContent : ''; }})()"
        )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the viewport, written to ``path``."""
        result = await self.send("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader


def _devtools_url(proc: subprocess.Popen, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := _LISTENING.search(log.read_bytes()):
            return found[1].decode()
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise BrowserError(f"chromium did not open its DevTools port (exit code {proc.poll()}):\n{tail}")


@contextlib.asynccontextmanager
async def browser(width: int = 1280, height: int = 860, timeout_s: float = 30.0) -> AsyncIterator[Page]:
    """Headless Chromium with one blank page attached; the browser and its children are killed on exit."""
    binary = chromium_or_skip()
    with tempfile.TemporaryDirectory(prefix="chromium-") as tmp:
        log = Path(tmp) / "stderr.log"
        argv = [
            binary, "--headless=new", "--no-sandbox", "--remote-debugging-port=0",
            f"--user-data-dir={tmp}/profile", f"--window-size={width},{height}",
            "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
            "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
            "about:blank",
        ]  # fmt: skip
        # stderr to a file, not a pipe: nobody reads a pipe after the first line, and a full one blocks chromium.
        with log.open("wb") as err:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        try:
            url = await asyncio.to_thread(_devtools_url, proc, log, timeout_s)
            async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
                page = Page(ws)
                try:
                    target = await page.send("Target.createTarget", url="about:blank")
                    attached = await page.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
                    page.session_id = attached["sessionId"]
                    for domain in ("Page", "Runtime", "Network", "Log"):
                        await page.send(f"{domain}.enable")
                    await page.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                                    deviceScaleFactor=1, mobile=False)  # fmt: skip
                    yield page
                finally:
                    await page.close()
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
