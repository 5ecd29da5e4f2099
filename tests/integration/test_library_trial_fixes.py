"""Library defects found by an integrator's trial: each test is what the
integrator saw go wrong, and fails without its fix."""

from __future__ import annotations

import asyncio
import datetime as dt
import pickle
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import securemail
from securemail.relay import RelayClosed
from tests.integration.relay_support import CaptureHandler, message, write_config
from tests.integration.test_library_api import STAFF, UpstreamThread, message_records


class _SlowData(CaptureHandler):
    """Takes 1.5 s to accept DATA: a send is still in flight when close() comes."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        await asyncio.sleep(1.5)
        return await super().handle_DATA(server, session, envelope)


def test_a_naive_now_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    # It used to deliver, then fail in the audit log: no record, and every
    # retry delivered another copy.
    up = UpstreamThread()
    try:
        relay = securemail.load(write_config(tmp_path, upstream_url=up.url))
        raw = message(to=STAFF)
        for bad in (dt.datetime(2026, 6, 1, 12, 0), dt.date(2026, 6, 1)):
            with pytest.raises(TypeError, match="now must be"):
                relay.send_sync(raw, now=bad)  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="now must be"):
                relay.check(raw, now=bad)  # type: ignore[arg-type]
        relay.close_sync()
        assert up.messages == []
    finally:
        up.stop()


def test_an_empty_generator_of_recipients_is_an_input_error(tmp_path: Path) -> None:
    relay = securemail.load(write_config(tmp_path, upstream_url="smtp://127.0.0.1:9"))
    try:
        with pytest.raises(securemail.InputError, match="no recipients"):
            relay.check(message(to=STAFF), rcpt_tos=(a for a in [STAFF] if False))
        with pytest.raises(securemail.InputError, match="no recipients"):
            relay.send_sync(message(to=STAFF), rcpt_tos=iter([]))
        outcome_rcpts = relay.check(message(to=STAFF), rcpt_tos=(a for a in [STAFF]))
        assert [d.address for d in outcome_rcpts.decisions] == [STAFF]
    finally:
        relay.close_sync()


def test_input_errors_are_permanent_replies_and_relay_closed_pickles() -> None:
    assert securemail.InputError("x").smtp_reply.startswith("5")
    exc = pickle.loads(pickle.dumps(RelayClosed()))
    assert isinstance(exc, RelayClosed) and str(exc) == str(RelayClosed())


async def test_cancelling_close_does_not_close_the_audit_log_under_a_send(
        tmp_path: Path) -> None:
    # A shutdown hook with a timeout: the store and audit log were closed while
    # the send went on; it delivered, had no audit record, and the caller was
    # told to retry (a second copy).
    up = UpstreamThread(_SlowData())
    try:
        cfg = write_config(tmp_path, upstream_url=up.url)
        relay = securemail.load(cfg)
        raw = message(to=STAFF)
        sending = asyncio.create_task(relay.send(raw))
        await asyncio.sleep(0.3)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(relay.close(), 0.2)
        outcome = await sending
        assert [r.status.value for r in outcome.recipients] == ["delivered"]
        await relay.close()  # the closing finishes; a second call waits for it
        assert len(up.messages) == 1
        [record] = message_records(cfg, raw)
        assert record["outcome"] == "delivered"
    finally:
        up.stop()


class Outbox:
    """docs/library.md's minimal transport, as written there (mypy checks it too)."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, mail_from: str, rcpt_tos: Sequence[str],
                   data: bytes) -> securemail.DeliveryResult:
        self.sent.append(data)
        return securemail.DeliveryResult(accepted=tuple(rcpt_tos))

    async def close(self) -> None:
        pass


def test_the_documented_custom_transport_works(tmp_path: Path) -> None:
    # The docs said send() returns SentMessage and did not mention close():
    # following them failed after upstream took the message.
    outbox = Outbox()
    transport: securemail.Transport = outbox
    relay = securemail.load(write_config(tmp_path, upstream_url="smtp://127.0.0.1:9"),
                            transport=transport)
    outcome = relay.send_sync(message(to=STAFF))
    relay.close_sync()
    assert [r.status.value for r in outcome.recipients] == ["delivered"]
    assert len(outbox.sent) == 1


def test_a_loop_closed_without_shutdown_leaves_no_unclosed_socket(tmp_path: Path) -> None:
    import gc
    import warnings

    up = UpstreamThread()
    try:
        relay = securemail.load(write_config(tmp_path, upstream_url=up.url))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(5):
                loop = asyncio.new_event_loop()
                loop.run_until_complete(relay.send(message(to=STAFF, body=f"Number {i}.")))
                loop.close()  # no shutdown: its pooled upstream connection is left behind
            relay.close_sync()
            gc.collect()
        leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
        assert leaks == [], [str(w.message)[:80] for w in leaks]
        assert len(up.messages) == 5
    finally:
        up.stop()


async def test_a_retry_after_a_timeout_reports_the_sealed_copy_s_portal_id(
        tmp_path: Path) -> None:
    # The retry said "sealed" with portal_id None: an integrator storing portal
    # ids (to link, revoke or show them) lost them in exactly this path.
    up = UpstreamThread(_SlowData())
    try:
        cfg = write_config(tmp_path, upstream_url=up.url, portal=True)
        relay = securemail.load(cfg)
        raw = message(to="jane@mail.example", body="Diagnosis F32.1 for Jane, SSN 123-45-6789.")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(relay.send(raw), 0.3)
        outcome = await relay.send(raw)  # waits for the first attempt, sends nothing twice
        [jane] = outcome.recipients
        assert jane.status.value == "sealed" and jane.portal_id
        now = dt.datetime.now(dt.UTC)
        active = [r.id for r in relay.portal.list(now) if r.state(now) == "active"]
        assert active == [jane.portal_id]
        await relay.close()
        assert len(up.messages) == 1
    finally:
        up.stop()


def test_a_ledger_from_an_earlier_release_gets_the_portal_id_column(tmp_path: Path) -> None:
    import sqlite3

    from securemail.deliveries import DeliveryLedger
    from securemail.model import Status

    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    conn.execute("CREATE TABLE deliveries (message_sha256 TEXT NOT NULL, recipient TEXT NOT"
                 " NULL, status TEXT NOT NULL, at TEXT NOT NULL,"
                 " PRIMARY KEY (message_sha256, recipient))")
    conn.execute("INSERT INTO deliveries VALUES ('d1', 'a@x.example', 'delivered', 't')")
    ledger = DeliveryLedger(conn)
    assert ledger.completed("d1") == {"a@x.example": Status.DELIVERED}  # old rows kept
    ledger.record("d2", {"b@x.example": Status.SEALED}, dt.datetime.now(dt.UTC),
                  {"b@x.example": "P1"})
    assert ledger.portal_ids("d2") == {"b@x.example": "P1"}
    DeliveryLedger(conn)  # a second opening (another process) changes nothing


class _PutsOneOff(CaptureHandler):
    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("busy@"):
            return "450 4.2.1 Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"


def test_a_recipient_upstream_puts_off_is_named_with_its_reply_code(tmp_path: Path) -> None:
    # RecipientsDeferred said only "every recipient deferred; retry the same
    # bytes later": causes was empty, the 450 only in the outcome.
    up = UpstreamThread(_PutsOneOff())
    try:
        relay = securemail.load(write_config(tmp_path, upstream_url=up.url))
        with pytest.raises(securemail.RecipientsDeferred) as deferred:
            relay.send_sync(message(to=STAFF), rcpt_tos=[STAFF, "busy@riverside.example"])
        relay.close_sync()
        assert deferred.value.deferred == ("busy@riverside.example",)
        assert deferred.value.causes == ("upstream: upstream deferred 1 recipient (450 4.2.1)",)
        assert "450 4.2.1" in str(deferred.value) and "busy@" not in str(deferred.value)
    finally:
        up.stop()


def test_a_legacy_mimetext_with_a_non_ascii_name_is_sent_not_blocked(tmp_path: Path) -> None:
    # compat32 writes 'To: Kollegin Groß <x@y>' as one encoded word holding the
    # address too: the message was blocked as malformed, and the decision
    # named "=?utf-8?q?...?=" as its recipient.
    import email
    import email.policy
    from email.mime.text import MIMEText

    up = UpstreamThread()
    try:
        relay = securemail.load(write_config(tmp_path, upstream_url=up.url))
        msg = MIMEText("See you at the team meeting.", "plain", "utf-8")
        msg["From"] = "Dr Reed <dr@riverside.example>"
        msg["To"] = f"Kollegin Groß <{STAFF}>"
        msg["Subject"] = "Grüße"
        outcome = relay.send_sync(msg)
        relay.close_sync()
        assert [(r.address, r.status.value) for r in outcome.recipients] == [
            (STAFF, "delivered")]
        sent = email.message_from_bytes(up.messages[0].data, policy=email.policy.default)
        assert str(sent["To"]) == f"Kollegin Groß <{STAFF}>"
        assert msg["To"] == f"Kollegin Groß <{STAFF}>"  # the caller's message is unchanged
    finally:
        up.stop()


class _RefusesOneAndHangsOnTheNotice(CaptureHandler):
    """Refuses nobody@; takes forever to accept the notice sent back to the sender."""

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if "dr@riverside.example" in envelope.rcpt_tos:
            await asyncio.sleep(60)
        return await super().handle_DATA(server, session, envelope)


async def test_close_interrupting_the_sender_notice_neither_resends_nor_raises_cancelled(
        tmp_path: Path) -> None:
    # close() cut the message off while it sent the "not delivered" notice:
    # nothing went into the ledger (the retry delivered a second copy), and the
    # caller, never cancelled itself, got a bare CancelledError.
    up = UpstreamThread(_RefusesOneAndHangsOnTheNotice())
    try:
        cfg = write_config(tmp_path, upstream_url=up.url)
        relay = securemail.load(cfg)
        raw = message(to=STAFF, cc="nobody@riverside.example")
        sending = asyncio.create_task(relay.send(raw))
        await asyncio.sleep(1.0)  # delivered to STAFF; the notice hangs
        # What close() does after upstream.timeout_seconds, here after 0.5 s
        # (the notice's own upstream timeout would otherwise end it first).
        await relay.in_flight.finish(0.5)
        with pytest.raises(securemail.TemporaryFailure, match="retry the same bytes"):
            await sending
        await relay.close()
        again = securemail.load(cfg)
        outcome = await asyncio.wait_for(again.send(raw), 30)
        await again.close()
        assert {r.address: r.status.value for r in outcome.recipients} == {
            STAFF: "delivered", "nobody@riverside.example": "refused"}
        assert sum(STAFF in m.rcpt_tos for m in up.messages) == 1  # not sent twice
    finally:
        up.stop()


def test_close_sync_from_two_threads_both_return_after_the_close(tmp_path: Path) -> None:
    # The second caller (another thread, another loop) returned at once, before
    # the audit log had its final checkpoint.
    import threading

    up = UpstreamThread(_SlowData())
    try:
        relay = securemail.load(write_config(tmp_path, upstream_url=up.url))
        started = threading.Event()

        def send() -> None:
            started.set()
            relay.send_sync(message(to=STAFF))

        sender = threading.Thread(target=send)
        sender.start()
        started.wait(5)
        time.sleep(0.3)  # the send is in flight (upstream takes 1.5 s)
        done: list[bool] = []

        def close() -> None:
            relay.close_sync()
            done.append(relay.audit._closed and relay._shut.is_set())

        closers = [threading.Thread(target=close) for _ in range(2)]
        for c in closers:
            c.start()
        for c in (*closers, sender):
            c.join(30)
        assert done == [True, True]
        assert len(up.messages) == 1
    finally:
        up.stop()


async def test_a_message_interrupted_while_rendering_leaves_no_active_seal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One portal copy was sealed, another recipient's rendering still ran when
    # close() interrupted the message: the sealed copy stayed active, with no
    # notice ever sent (no link to it).
    import securemail.pipeline as pipeline

    real = pipeline.render_protected

    async def slow_for_kim(relay: Any, d: Any, *args: Any, **kwargs: Any) -> Any:
        if d.address.startswith("kim@"):
            await asyncio.sleep(60)
        return await real(relay, d, *args, **kwargs)

    monkeypatch.setattr(pipeline, "render_protected", slow_for_kim)
    # Kim is Jane's authorised contact: both may have the message.
    extra = ('[[directory.clients]]\nid = "c-1002"\naddresses = ["kim@mail.example"]\n'
             'contacts = [{ address = "jane@mail.example" }]\n')
    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:9", portal=True, extra=extra)
    relay = securemail.load(cfg)
    raw = message(to="jane@mail.example", cc="kim@mail.example",
                  body="Diagnosis F32.1 for Jane and Kim, SSN 123-45-6789.")
    sending = asyncio.create_task(relay.send(raw, rcpt_tos=["jane@mail.example",
                                                            "kim@mail.example"]))
    now = dt.datetime.now(dt.UTC)
    for _ in range(100):  # Jane's copy is sealed
        if relay.portal.list(now):
            break
        await asyncio.sleep(0.05)
    await relay.in_flight.finish(0.2)
    with pytest.raises(securemail.TemporaryFailure):
        await sending
    rows = relay.portal.list(dt.datetime.now(dt.UTC))
    assert rows and all(r.state(dt.datetime.now(dt.UTC)) == "revoked" for r in rows)
    await relay.close()
