"""Recording the steps of a message for `mailyard trace`.

Each service adds its steps to the MetadataStore's trace table as it acts,
after the act itself is durable: the trace is a record for the postmaster,
never on the path of the mail, so a failure to write it is logged and the
mail goes on (an outage leaves a gap in the trace, not a lost message).
"""
from __future__ import annotations

import json
import re
import time

from mailyard.policy.logs import EventLog
from mailyard.store.metadata.base import MetadataStore, TraceEvent

# The steps, in the order a message meets them.
ACCEPTED = "accepted"            # the MX said 250: from whom, which IP, TLS
AUTHENTICATED = "authenticated"  # SPF, DKIM, DMARC, ARC verdicts at the MX
SUBMITTED = "submitted"          # a user sent it (SMTP submission or the API)
QUEUED = "queued"                # durable on a topic, for whom
DELIVERED = "delivered"          # stored in one local mailbox
INDEXED = "indexed"              # searchable in that mailbox
ATTEMPT = "attempt"              # one outbound try to one recipient, with the reply
RESCHEDULED = "rescheduled"      # deferred recipients wait for the next try
BOUNCED = "bounced"              # a DSN (failed or delayed) went to the sender
DEAD_LETTERED = "dead_lettered"  # set aside on mail.dlq after repeated failures
_RANK = {name: rank for rank, name in enumerate(
    (ACCEPTED, AUTHENTICATED, SUBMITTED, QUEUED, DELIVERED, INDEXED, ATTEMPT, RESCHEDULED,
     BOUNCED, DEAD_LETTERED))}


def now_ms() -> int:
    return int(time.time() * 1000)


def step(queue_id: str, name: str, key: str = "", at_ms: int | None = None,
         **detail) -> TraceEvent:
    """A TraceEvent; detail values become strings, empty ones are left out."""
    return TraceEvent(queue_id, at_ms if at_ms is not None else now_ms(), name, key,
                      {k.rstrip("_"): str(v) for k, v in detail.items() if v not in ("", None)})


async def record(metadata: MetadataStore, log: EventLog, events: list[TraceEvent],
                 refs: list[str] = ()) -> None:
    if not events:
        return
    try:
        await metadata.add_trace(events, [r for r in refs if r])
    except Exception as exc:
        log.warning("trace_not_recorded", queue_id=events[0].queue_id, step=events[0].step,
                    error=repr(exc))


_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)?(<[^>\r\n]*>)", re.I | re.M)


def message_id_of(raw: bytes) -> str:
    """The Message-ID of a raw message's header section ("" when none), so
    `mailyard trace <id@host>` finds it from the moment it is accepted."""
    end = raw.find(b"\r\n\r\n")
    found = _MESSAGE_ID.search(raw[:end if end >= 0 else 64 * 1024])
    return found.group(1).decode("utf-8", "replace") if found else ""


# --- reading: `mailyard trace` ---------------------------------------------

async def load_trace(metadata: MetadataStore, ref: str) -> dict[str, list[TraceEvent]]:
    """The steps of every queue id `ref` names (itself, or the messages it is
    a Message-ID or an API message id of), and of the bounces they caused,
    in the order they began."""
    ref = ref.strip()
    candidates = [ref] if ref.startswith("<") or "@" not in ref else [ref, f"<{ref}>"]
    pending: list[str] = []
    for candidate in candidates:
        if await metadata.get_trace(candidate):
            pending.append(candidate)
        pending += await metadata.find_trace(candidate)
    found: dict[str, list[TraceEvent]] = {}
    while pending:
        queue_id = pending.pop(0)
        if queue_id in found:
            continue
        found[queue_id] = await metadata.get_trace(queue_id)
        pending += [e.detail["report_queue_id"] for e in found[queue_id]
                    if "report_queue_id" in e.detail]
    for events in found.values():  # steps of one millisecond in the order they happen
        events.sort(key=lambda e: (e.at_ms, _RANK.get(e.step, len(_RANK)), e.key))
    ordered = sorted((q for q in found if found[q]), key=lambda q: found[q][0].at_ms)
    return {q: found[q] for q in ordered}


def format_trace(traces: dict[str, list[TraceEvent]], as_json: bool = False) -> str:
    if as_json:
        return "".join(json.dumps({"queue_id": e.queue_id, "at": _iso(e.at_ms), "step": e.step,
                                   "key": e.key, **e.detail}, ensure_ascii=False) + "\n"
                       for events in traces.values() for e in events)
    lines = []
    for queue_id, events in traces.items():
        lines.append(f"{queue_id}")
        for event in events:
            details = " ".join(f"{k}={_quote(v)}" for k, v in event.detail.items())
            lines.append(f"  {_iso(event.at_ms)}  {event.step:<13} {details}".rstrip())
        lines.append("")
    return "\n".join(lines)


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


def _quote(value: str) -> str:
    return json.dumps(value, ensure_ascii=False) if (not value or any(
        c.isspace() or c == '"' for c in value)) else value
