"""The dashboard in headless Chromium against a running `mailyard up` with
traffic: the page polls /dashboard/data, draws its charts and fills the
refusal and deferral tables; the test reads the DOM over the DevTools
protocol and checks the screenshot's chart pixels.

MAILYARD_DASHBOARD_SCREENSHOT=docs/dashboard.png keeps the screenshot there
(that is how the README's picture is made)."""
from __future__ import annotations

import io
import os
import shutil
import time

import httpx
import pytest
from PIL import Image

from tests.e2e.chromium import Chromium
from tests.e2e.harness import Client, Mailyard, send
from tests.e2e.outbound_support import message, queue, wait_until
from tests.e2e.receivers import Receiver, free_port
from tests.e2e.test_metrics import refuse_rcpt

ALICE, CAROL = "alice@example.test", "carol@other.test"
REMOTE_PORT = free_port("127.0.0.4")
ZONE = """
slow.test.     IN MX 10 mx.slow.test.
mx.slow.test.  IN A  127.0.0.4
"""
WAVES = 4
CHARTS = ("depth", "throughput", "latency")

pytestmark = pytest.mark.skipif(shutil.which("chromium") is None,
                                reason="chromium (Debian package) is not installed; tests/run "
                                       "installs it")


def dashboard_data(gateway) -> dict:
    return httpx.get(f"http://{gateway[0]}:{gateway[1]}/dashboard/data", timeout=10).json()


def test_dashboard_renders_live_data_in_chromium(tmp_path):
    mailyard = Mailyard(tmp_path, zone=ZONE, settings={
        "metrics": {"sample_interval": 0.5},
        "outbound": {"remote_port": REMOTE_PORT, "retry_schedule": ["1h"],
                     "connection_idle": 0.2}})
    mailyard.add_users(ALICE, CAROL)
    refusing = lambda rcpt, tries: "451 4.3.2 Greylisted, come back later"
    with Receiver("127.0.0.4", REMOTE_PORT, rcpt=refusing):
        service = mailyard.start("up")
        try:
            service.wait_listening("mx", "mailbox", "gateway")
            mx, gateway = service.addresses["mx"], service.addresses["gateway"]
            alice = Client(service.addresses["mailbox"], mailyard.token(ALICE))
            # Traffic in waves, so the charts have a shape.
            to_alice = 0
            for wave in range(WAVES):
                for n in range(wave + 2):
                    rcpt = (ALICE, CAROL)[n % 2]
                    to_alice += rcpt == ALICE
                    send(mx, "sender@remote.test", [rcpt],
                         message("sender@remote.test", rcpt, f"wave {wave} number {n}"))
                alice.list("INBOX")
                time.sleep(0.6)
            assert refuse_rcpt(mx, "nobody@example.test")[0] == 550
            queue(mailyard, *((ALICE, [f"user{n}@slow.test"], message(ALICE, f"user{n}@slow.test",
                                                                      f"later {n}"))
                              for n in range(2)))
            assert len(alice.wait_for(to_alice, "INBOX")) == to_alice

            def sampled() -> bool:
                data = dashboard_data(gateway)
                return bool(data["deferrals"]) and data["samples"][-1]["lag"]["mail.inbound"] == 0
            wait_until(sampled, 30, "deliveries and deferrals sampled")
            alice.close()

            with Chromium(width=1280, height=800) as browser:
                browser.open(f"http://{gateway[0]}:{gateway[1]}/dashboard")
                browser.wait_for("Number(document.body.dataset.samples) >= 8 && "
                                 "document.querySelectorAll('#deferrals tbody td').length > 1")
                points = browser.evaluate(
                    "Object.fromEntries([...document.querySelectorAll('canvas')]"
                    ".map(c => [c.id, Number(c.dataset.points)]))")
                refusals = browser.evaluate(
                    "[...document.querySelectorAll('#refusals tbody tr')]"
                    ".map(r => [...r.cells].map(c => c.textContent))")
                deferrals = browser.evaluate(
                    "[...document.querySelectorAll('#deferrals tbody tr')]"
                    ".map(r => [...r.cells].map(c => c.textContent))")
                boxes = browser.evaluate(
                    "Object.fromEntries([...document.querySelectorAll('canvas')].map(c => "
                    "{const r = c.getBoundingClientRect(); "
                    "return [c.id, [r.left, r.top, r.right, r.bottom]]}))")
                status = browser.evaluate("document.getElementById('status').textContent")
                legends = browser.evaluate(
                    "Object.fromEntries([...document.querySelectorAll('.legend')]"
                    ".map(l => [l.dataset.for, l.textContent]))")
                png = browser.screenshot()
        finally:
            assert service.stop() == 0
    shot = tmp_path / "dashboard.png"  # left there to look at when a check fails
    shot.write_bytes(png)

    assert status.startswith("updated"), status
    assert set(points) == set(CHARTS) and all(points[c] > 0 for c in CHARTS), points
    assert "delivered: " in legends["throughput"] and "delivery: " in legends["latency"], legends
    # The refusal: the MX's, at RCPT, by the unknown_user check, with its reply and client.
    [refusal] = refusals
    _, service_name, stage, reason, reply, client = refusal
    assert (service_name, stage, reason, client) == ("mx", "rcpt", "unknown_user", "127.0.0.1")
    assert reply.startswith("550 5.1.1")
    # Two messages deferred by the one destination, with the remote's reply.
    [deferral] = deferrals
    destination, count, next_attempt, last_error = deferral
    assert (destination, count) == ("slow.test", "2")
    assert "451 4.3.2 Greylisted" in last_error and next_attempt

    # The charts are drawn: besides the grey grid and labels, each canvas has
    # the saturated pixels of its series' lines.
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == (1280, 800)
    for chart in CHARTS:
        left, top, right, bottom = (round(v) for v in boxes[chart])
        colours = image.crop((left, top, right, bottom)).getcolors(maxcolors=1 << 20)
        inked = sum(count for count, rgb in colours if max(rgb) - min(rgb) > 80)
        assert inked > 100, f"{chart}: only {inked} pixels of lines"

    keep = os.environ.get("MAILYARD_DASHBOARD_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)
