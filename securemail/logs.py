"""JSON log lines, and exactly one line per message received over SMTP.

The pipeline logs its own ``message`` event (ids, actions, rule ids, timing)
on the ``securemail.message`` logger. When the message came in over SMTP, the
SMTP layer knows more (listener, reply code, TLS, authentication), so while a
transaction is being handled :class:`MessageEventMerger` holds the pipeline's
event back and the SMTP layer writes one merged line after the reply is
decided. Library calls (no SMTP transaction) log the pipeline's line as is.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["JsonFormatter", "MessageEventMerger", "configure_logging", "exception_fields",
           "held_event", "holding_events", "release_held"]

MESSAGE_LOGGER = "securemail.message"

# The pipeline event held back for the SMTP transaction in this task, if any.
_held: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "securemail_held_event", default=None)


class holding_events:  # noqa: N801 - used as a context manager, reads as a phrase
    """``with holding_events(): await relay.send(...)``: hold the pipeline's line."""

    def __enter__(self) -> dict[str, Any]:
        box: dict[str, Any] = {}
        self._token = _held.set(box)
        return box

    def __exit__(self, *exc: object) -> None:
        _held.reset(self._token)


def release_held(box: dict[str, Any]) -> None:
    """The SMTP transaction that held the pipeline's line will not write it (its
    client went away): write what was held, and let a later line through."""
    box["released"] = True
    event = held_event(box)
    if event:
        logging.getLogger(MESSAGE_LOGGER).info("%s", message_summary(event),
                                               extra={"event": event})


def held_event(box: dict[str, Any]) -> dict[str, Any]:
    """The pipeline event captured in ``box`` (empty if the pipeline logged none)."""
    event = box.get("event")
    return dict(event) if isinstance(event, dict) else {}


class MessageEventMerger(logging.Filter):
    """Drops the pipeline's message line while an SMTP transaction holds it."""

    def filter(self, record: logging.LogRecord) -> bool:
        box = _held.get()
        event = getattr(record, "event", None)
        if (box is not None and not box.get("released") and isinstance(event, dict)
                and event.get("event") == "message" and "smtp" not in event):
            box["event"] = event
            return False
        return True


def message_summary(event: Mapping[str, Any]) -> str:
    """The text of a per-message log record, for a plain ``logging`` setup (the
    JSON formatter writes the event itself): ids, actions and recipient domains,
    never a local part or content."""
    shown = []
    for r in event.get("recipients") or ():
        status = f"/{r['status']}" if r.get("status") else ""
        shown.append(f"{r.get('action')}{status} @{r.get('domain')}")
    text = f"message {event.get('message_sha256', '?')}: {', '.join(shown) or 'no recipients'}"
    smtp = event.get("smtp")
    if isinstance(smtp, Mapping) and smtp.get("reply"):
        text += f"; replied {smtp['reply']}"
    return text


# The folder holding the securemail package: frames under it are "ours".
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OURS = os.path.join(_PACKAGE_ROOT, "securemail") + os.sep


def _short_path(filename: str) -> str:
    """``securemail/portal/app.py``, ``starlette/routing.py``: the file's path
    below the ``sys.path`` entry it was imported from (no install paths)."""
    path = os.path.abspath(filename)
    roots = [os.path.abspath(p) for p in sys.path if p] + [_PACKAGE_ROOT]
    best = ""
    for root in roots:
        root = root.rstrip(os.sep) + os.sep
        if path.startswith(root) and len(root) > len(best):
            best = root
    return (path[len(best):] if best else os.path.basename(path)).replace(os.sep, "/")


def exception_fields(exc: BaseException) -> dict[str, str]:
    """What a log line may say about an exception: its class (``exc_class``)
    and where it was raised (``exc_at``, ``file:line`` of the innermost frame in
    securemail's own code, else of the frame that raised it).

    Never its message nor a traceback: either can hold content (an address,
    a Subject, a line of the message) and logs never do."""
    cls = type(exc)
    name = cls.__qualname__
    if cls.__module__ != "builtins":
        name = f"{cls.__module__}.{name}"
    ours: tuple[str, int] | None = None
    last: tuple[str, int] | None = None
    tb = exc.__traceback__
    while tb is not None:
        last = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        if os.path.abspath(last[0]).startswith(_OURS):
            ours = last
        tb = tb.tb_next
    where = ours or last
    return {"exc_class": name,
            "exc_at": f"{_short_path(where[0])}:{where[1]}" if where else "unknown"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: the record's ``event`` dict, or level+logger+msg.

    A record with an exception (``log.exception``, a server's "Exception in ASGI
    application") gets its class and location (:func:`exception_fields`), never
    its message or traceback."""

    def format(self, record: logging.LogRecord) -> str:
        event = getattr(record, "event", None)
        out: dict[str, Any] = dict(event) if isinstance(event, dict) else {
            "event": "log", "msg": record.getMessage()}
        if isinstance(event, dict) and "notice" in event:
            # An operator notice's text is written for the log (no content, no
            # local parts) and says what happened and to whom: keep it.
            out.setdefault("msg", record.getMessage())
        out.setdefault("level", record.levelname.lower())
        out.setdefault("logger", record.name)
        out.setdefault("pid", record.process)  # which worker, with relay.workers > 1
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            for key, value in exception_fields(exc).items():
                out.setdefault(key, value)
        out["ts"] = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        return json.dumps(out, separators=(",", ":"), sort_keys=True, default=str)


def configure_logging(level: int = logging.INFO) -> None:
    """JSON lines on stderr; silence aiosmtpd's per-command log (it has addresses)."""
    import time

    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter()
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    install_merger()
    # aiosmtpd logs every command line with full addresses at INFO, and a
    # deprecation warning on each AUTH: neither belongs in our logs.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)


def install_merger() -> None:
    logger = logging.getLogger(MESSAGE_LOGGER)
    if not any(isinstance(f, MessageEventMerger) for f in logger.filters):
        logger.addFilter(MessageEventMerger())
