"""A log record with an exception (``log.exception``, uvicorn's "Exception in
ASGI application") says which exception and where, never its message or a
traceback: either can carry content (an address, a Subject, a line of text)."""

from __future__ import annotations

import json
import logging

from securemail.logs import JsonFormatter, exception_fields
from securemail.portal.secret import PortalSecret

SECRET = "jane.doe@mail.example Subject: biopsy results"


def record_for(exc: BaseException, msg: str = "Exception in ASGI application") -> dict[str, object]:
    record = logging.LogRecord("uvicorn.error", logging.ERROR, __file__, 1, msg, None,
                               (type(exc), exc, exc.__traceback__))
    line = JsonFormatter().format(record)
    assert SECRET not in line and "biopsy" not in line
    assert "Traceback" not in line
    out = json.loads(line)
    assert isinstance(out, dict)
    return out


def test_the_class_and_the_innermost_securemail_frame_are_logged() -> None:
    secret = PortalSecret(b"k" * 32)
    try:
        secret.mac(SECRET, object())  # type: ignore[arg-type]  # raises inside securemail
    except Exception as exc:  # noqa: BLE001
        line = record_for(exc)
        fields = exception_fields(exc)
    else:
        raise AssertionError("expected an exception")
    assert line["msg"] == "Exception in ASGI application"
    assert line["exc_class"] == fields["exc_class"]
    assert line["exc_at"] == fields["exc_at"]
    path, _, lineno = str(line["exc_at"]).rpartition(":")
    assert path == "securemail/portal/secret.py", line["exc_at"]
    assert lineno.isdigit()


def test_an_error_outside_securemail_names_the_frame_that_raised_it() -> None:
    try:
        json.loads("{" + SECRET)
    except json.JSONDecodeError as exc:
        line = record_for(exc)
    assert line["exc_class"] == "json.decoder.JSONDecodeError"
    assert str(line["exc_at"]).startswith("json/decoder.py:")


def test_a_builtin_exception_is_named_plainly_and_its_message_is_dropped() -> None:
    try:
        raise ValueError(SECRET)
    except ValueError as exc:
        line = record_for(exc, "portal request failed")
        assert exc.__traceback__ is not None
        raised_at = exc.__traceback__.tb_lineno
    assert line["exc_class"] == "ValueError"
    assert line["exc_at"] == f"tests/unit/test_logs_exceptions.py:{raised_at}"


def test_a_record_without_an_exception_is_unchanged() -> None:
    record = logging.LogRecord("securemail", logging.INFO, __file__, 1, "hello", None, None)
    line = json.loads(JsonFormatter().format(record))
    assert "exc_class" not in line and "exc_at" not in line
    assert line["msg"] == "hello"


def test_an_operator_notice_keeps_its_text_and_a_message_line_does_not() -> None:
    # The connection-limit line read only {"notice": "connection-limit"}: which
    # client, which limit, was lost.
    notice = logging.LogRecord("securemail.smtp", logging.WARNING, __file__, 1,
                               "refused a connection from %s (421): %d sessions", ("10.0.0.7", 21),
                               None)
    notice.event = {"notice": "connection-limit"}
    line = json.loads(JsonFormatter().format(notice))
    assert line["notice"] == "connection-limit"
    assert line["msg"] == "refused a connection from 10.0.0.7 (421): 21 sessions"
    # A per-message line is its event alone: its fields were chosen to hold no
    # local part, and a message text may.
    message = logging.LogRecord("securemail.message", logging.INFO, __file__, 1,
                                "to %s", ("jane.doe@mail.example",), None)
    message.event = {"event": "message", "recipients": 1}
    assert "msg" not in json.loads(JsonFormatter().format(message))
