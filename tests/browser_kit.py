"""Driving Debian's chromium headless over the DevTools protocol (a websocket; no browser download, no Playwright),
and serving an app on a real port for it: the browser tests' kit."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import subprocess
import threading
import time

import httpx
import uvicorn

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Chromium:
    """Headless chromium with a fresh profile, one page driven over the DevTools protocol (websocket)."""

    def __init__(self, profile) -> None:
        self.port = _free_port()
        self.proc = subprocess.Popen(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--remote-debugging-port={self.port}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self._id = 0
        self.events: list[dict] = []  # DevTools events seen while waiting for answers (Network.*, once enabled)

    async def __aenter__(self) -> Chromium:
        import websockets

        deadline = time.monotonic() + 30
        while True:
            try:
                targets = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (httpx.HTTPError, StopIteration):
                assert time.monotonic() < deadline, "chromium did not open its DevTools port"
                await asyncio.sleep(0.2)
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=None)
        await self.send("Page.enable")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    async def send(self, method: str, **params):
        self._id += 1
        ident = self._id
        await self.ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=30))
            if message.get("id") == ident:
                assert "error" not in message, message
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    async def evaluate(self, expression: str):
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"page never satisfied {expression}"
            await asyncio.sleep(0.1)

    async def open(self, url: str) -> None:
        await self.send("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    async def log_in(self, base: str, name: str, key: str) -> None:
        await self.open(f"{base}/admin/login")
        await self.wait_for("!!document.querySelector('input[name=username]')")
        await self.evaluate(
            f"document.querySelector('input[name=username]').value = {json.dumps(name)};"
            f"document.querySelector('input[name=password]').value = {json.dumps(key)};"
            "document.querySelector('form').submit(); true"
        )
        await self.wait_for("document.readyState === 'complete' && !location.pathname.endsWith('/login') || !!document.querySelector('.alert, .invalid-feedback')")

    async def screenshot(self, path, *, width: int = 1280, height: int = 900, mobile: bool = False) -> None:
        """A PNG of the page as a `width` x `height` screen shows it (the whole page's height when it is taller)."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=mobile)
        full = await self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=min(max(height, int(full or height)), 2400),
                        deviceScaleFactor=1, mobile=mobile)
        await asyncio.sleep(0.3)
        shot = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)
        path.write_bytes(base64.b64decode(shot["data"]))


class ThreadServer:
    """An ASGI app on uvicorn, on a real port, in a thread with its own event loop; `call` runs a coroutine there."""

    def __init__(self, app) -> None:
        self.port = _free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, log_level="warning"))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.server.serve(),), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.loop.close()

    async def call(self, coroutine, timeout: float = 60.0):
        """Run `coroutine` on the server's loop (where its database engine and bus live) and return its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)
