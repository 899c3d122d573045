"""Structured logs: one event per line, addresses masked.

A line is logfmt (`key=value` pairs) or, with `log.format = "json"`, one JSON
object with the same keys, for log shippers that parse JSON.

Every line about a message carries its queue id, so one grep follows it
through the MX, the queue and the delivery worker, as with Postfix.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

_MASK = True
_JSON = False
_ADDRESS = re.compile(r"([^\s@<>\"']{1,64})@([^\s@<>\"']+)")


def setup(level: str = "info", mask_addresses: bool = True, stream=None,
          format: str = "logfmt") -> None:
    global _MASK, _JSON
    _MASK = mask_addresses
    _JSON = format == "json"
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("mailyard")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # The backend client libraries log through Python's default handler: plain
    # text, and during an outage dozens of identical lines a second (aiokafka).
    # Theirs go out as logfmt lines too, warnings and up, each repeat of the
    # same message folded into a count for REPEAT_WINDOW seconds.
    library = logging.StreamHandler(stream or sys.stderr)
    library.setFormatter(_LibraryFormatter())
    library.addFilter(_RepeatFilter())
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers[:] = [library]
        logger.setLevel(max(logging.WARNING, root.level))
        logger.propagate = False


LIBRARY_LOGGERS = ("aiokafka", "kafka", "cassandra", "botocore", "aiobotocore", "opensearch",
                   "elasticsearch", "elastic_transport", "redis")
REPEAT_WINDOW = 10.0


class _RepeatFilter(logging.Filter):
    """Lets a message through once per REPEAT_WINDOW seconds per logger and
    message template; the next one that passes says how many were folded."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: dict[tuple[str, str], list] = {}  # key -> [last passed at, folded]

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = (record.name, str(record.msg)), time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < REPEAT_WINDOW:
            seen[1] += 1
            return False
        record.repeated = seen[1] if seen else 0
        self._seen[key] = [now, 0]
        if len(self._seen) > 1000:  # messages with ids in their template: keep it bounded
            self._seen.clear()
        return True


class _LibraryFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        message = record.getMessage()
        if record.exc_info:
            message += " " + repr(record.exc_info[1])
        return line({"ts": stamp + "Z", "level": record.levelname.lower(), "service": "library",
                     "pid": os.getpid(), "event": "library_log", "logger": record.name,
                     "message": message, "repeated": getattr(record, "repeated", 0) or None})


def mask(text: str) -> str:
    """a***@example.com: enough to tell addresses apart in a log, not to harvest them."""
    if not _MASK:
        return text
    return _ADDRESS.sub(lambda m: f"{m.group(1)[:1]}***@{m.group(2)}", text)


def line(fields: dict) -> str:
    """One event as the configured format; None values are left out."""
    fields = {k.rstrip("_"): v for k, v in fields.items() if v is not None}
    if _JSON:
        return json.dumps({k: mask(v) if isinstance(v, str) else
                           v if isinstance(v, (int, float, bool)) else str(v)
                           for k, v in fields.items()}, ensure_ascii=False)
    return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(value) -> str:
    text = mask(str(value)) if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' ="\n'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class EventLog:
    """`log.info("accepted", queue_id=..., rcpts=2)` → one line."""

    def __init__(self, service: str):
        self.service = service
        self._logger = logging.getLogger(f"mailyard.{service}")

    def _emit(self, level: int, event: str, fields: dict) -> None:
        if not self._logger.isEnabledFor(level):
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        self._logger.log(level, line({"ts": stamp + "Z",
                                      "level": logging.getLevelName(level).lower(),
                                      "service": self.service, "pid": os.getpid(),
                                      "event": event, **fields}))

    def debug(self, event: str, **fields) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields) -> None:
        self._emit(logging.ERROR, event, fields)
