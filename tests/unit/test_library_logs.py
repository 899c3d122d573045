"""Backend client libraries' log records come out as logfmt lines, and an
outage's flood of identical messages is folded into a count."""
from __future__ import annotations

import io
import logging

from mailyard.policy import logs


def test_library_warnings_are_logfmt_and_repeats_are_folded(monkeypatch):
    stream = io.StringIO()
    logs.setup("info", stream=stream)
    kafka = logging.getLogger("aiokafka.conn")
    for _ in range(200):
        kafka.error("Unable connect to %s", "127.0.0.1:19092")
    kafka.info("routine detail")           # below warning: not shown
    logging.getLogger("redis").warning("other message")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("ts=") and "level=error service=library" in lines[0]
    assert "logger=aiokafka.conn" in lines[0] and '"Unable connect to 127.0.0.1:19092"' in lines[0]
    assert "logger=redis" in lines[1]

    # After the window the next one passes and says how many were folded.
    monkeypatch.setattr(logs, "REPEAT_WINDOW", 0.0)
    kafka.error("Unable connect to %s", "127.0.0.1:19092")
    assert stream.getvalue().splitlines()[-1].endswith("repeated=199")
