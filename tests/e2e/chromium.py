"""Headless Chromium (the Debian package) driven over the DevTools protocol.

`--remote-debugging-pipe` speaks the protocol on file descriptors 3 (our
commands) and 4 (its replies and events), each message JSON ended by a NUL
byte: no websocket library and no browser download needed.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
         "--no-first-run", "--no-default-browser-check", "--disable-extensions",
         # Nothing from the internet: no updates, sync, field trials or safe browsing.
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-features=Translate,MediaRouter,OptimizationHints",
         "--hide-scrollbars", "--mute-audio")


class ChromiumError(Exception):
    pass


# Both ends first moved past 9, so neither is overwritten when one already is 3 or 4.
TRAMPOLINE = ("import fcntl, os, sys; "
              "ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD_CLOEXEC, 10) for fd in sys.argv[1:3]]; "
              "os.dup2(ends[0], 3); os.dup2(ends[1], 4); os.execv(sys.argv[3], sys.argv[3:])")


class Chromium:
    def __init__(self, width: int = 1280, height: int = 1000):
        binary = shutil.which("chromium")
        if binary is None:
            raise ChromiumError("chromium is not installed (Debian package chromium; "
                                "tests/run installs it)")
        self.profile = tempfile.mkdtemp(prefix="mailyard-chromium-")
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # A Python trampoline puts our pipe ends on fds 3 and 4, where Chromium
        # looks (dash cannot redirect fds past 9, preexec_fn is unsafe with threads).
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TRAMPOLINE, str(commands_read), str(replies_write), binary,
             *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(commands_read, replies_write),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        self._buffer = b""
        self._next_id = 0
        self.size = (width, height)
        self.session = None

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _send(self, method: str, params: dict | None = None, session: str | None = None) -> int:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        return self._next_id

    def _receive(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise ChromiumError("no answer from chromium")
            ready, _, _ = select.select([self._replies], [], [], 0.5)
            if ready:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise ChromiumError(f"chromium exited ({self.proc.poll()})")
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, timeout: float = 30,
             page: bool = True) -> dict:
        """One command, its result; events on the way are dropped."""
        wanted = self._send(method, params, self.session if page else None)
        while True:
            message = self._receive(timeout)
            if message.get("id") == wanted:
                if "error" in message:
                    raise ChromiumError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        targets = self.call("Target.getTargets", page=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"],
                                                           "flatten": True},
                                 page=False)["sessionId"]
        width, height = self.size
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        self.call("Page.enable")
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise ChromiumError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30):
        """Evaluates `expression` until it is truthy; returns that value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.evaluate(expression)
            except ChromiumError:  # the page is still loading
                found = None
            if found:
                return found
            if time.monotonic() > deadline:
                raise ChromiumError(f"timed out waiting for {expression}")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._send("Browser.close")
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        os.close(self._commands)
        os.close(self._replies)
        shutil.rmtree(self.profile, ignore_errors=True)
