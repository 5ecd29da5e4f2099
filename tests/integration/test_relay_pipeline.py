"""The real relay (``securemail.load``) behind the SMTP listener, delivering to
real aiosmtpd upstreams: every reply path end to end, and no loss or
duplicate across a 451 and the sender's retry."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest

from tests.integration.relay_support import (
    RunningRelay,
    Upstream,
    make_certs,
    message,
    run_relay,
    start_upstream,
    write_config,
)

SENDER = "dr@riverside.example"
STAFF = "colleague@riverside.example"


@pytest.fixture
async def make_relay(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    running: list[RunningRelay] = []

    async def make(upstream_url: str, **kw: Any) -> RunningRelay:
        r = await run_relay(write_config(tmp_path, upstream_url=upstream_url, **kw))
        running.append(r)
        return r

    yield make
    for r in running:
        await r.stop()


async def send(port: int, data: bytes, rcpts: list[str]) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=15)
    await client.connect()
    try:
        await client.mail(SENDER)
        for r in rcpts:
            await client.rcpt(r)
        try:
            resp = await client.data(data)
            return resp.code, resp.message
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    finally:
        client.close()


def url(up: Upstream) -> str:
    return f"smtp://127.0.0.1:{up.port}"


async def test_staff_mail_passes_through_unchanged(make_relay: Callable[..., Any],
                                                   upstream: Upstream) -> None:
    r = await make_relay(url(upstream))
    data = message(to=STAFF)
    code, text = await send(r.port, data, [STAFF])
    assert code == 250 and text.startswith("2.0.0")
    assert [(m.rcpt_tos, m.data) for m in upstream.messages] == [([STAFF], data)]


async def test_policy_block_is_550_naming_recipient_and_rule(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay(url(upstream))
    data = message(to="jane@mail.example", cc="mom@other.example",
                   subject="Your session", body="Notes from our session on Tuesday.")
    code, text = await send(r.port, data, ["jane@mail.example", "mom@other.example"])
    assert code == 550 and text.startswith("5.7.1")
    assert "unauthorised-recipient" in text and "mom@other.example" in text
    assert "session" not in text.lower()
    assert upstream.messages == []


async def test_upstream_without_starttls_is_451_and_gets_nothing(
        tmp_path: Path, make_relay: Callable[..., Any], upstream: Upstream,
        caplog: pytest.LogCaptureFixture) -> None:
    certs = make_certs(tmp_path)
    r = await make_relay(url(upstream), upstream_tls="required", ca_file=str(certs.ca_file))
    with caplog.at_level(logging.WARNING, logger="securemail.message"):
        code, text = await send(r.port, message(to=STAFF), [STAFF])
    assert (code, text.split()[0]) == (451, "4.3.0")
    assert upstream.messages == []
    # The operator learns why (the sender only gets the generic 451).
    assert (f"deferred at upstream: upstream 127.0.0.1:{upstream.port} does not offer STARTTLS"
            ' (tls = "required")') in caplog.messages


async def test_an_upstream_that_is_down_is_named_in_the_deferral_log(
        make_relay: Callable[..., Any], caplog: pytest.LogCaptureFixture) -> None:
    import socket

    # A port nobody listens on, held bound (connections to it are refused): closed, the
    # relay's own listeners, bound to port 0 next, could be given it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = await make_relay(f"smtp://127.0.0.1:{port}")
        with caplog.at_level(logging.WARNING, logger="securemail.message"):
            code, _ = await send(r.port, message(to=STAFF), [STAFF])
    assert code == 451
    assert any(m.startswith(f"deferred at upstream: upstream 127.0.0.1:{port} unavailable (")
               and "ECONNREFUSED" in m for m in caplog.messages), caplog.messages


async def test_a_reload_that_requires_upstream_tls_applies_to_the_next_message(
        tmp_path: Path, make_relay: Callable[..., Any], upstream: Upstream) -> None:
    r = await make_relay(url(upstream))  # tls = "none": allowed on loopback
    assert (await send(r.port, message(to=STAFF), [STAFF]))[0] == 250
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(cfg.read_text().replace('tls = "none"', 'tls = "required"'))
    old_transport = r.relay.transport
    r.relay.reload()  # what SIGHUP does
    assert r.relay.transport is not old_transport
    code, text = await send(r.port, message(to=STAFF), [STAFF])
    assert (code, text.split()[0]) == (451, "4.3.0")  # no STARTTLS upstream: nothing sent
    assert len(upstream.messages) == 1


async def test_verified_starttls_upstream_delivers(tmp_path: Path,
                                                   make_relay: Callable[..., Any]) -> None:
    certs = make_certs(tmp_path)
    up = await start_upstream(tls=certs.server_context)
    try:
        r = await make_relay(url(up), upstream_tls="required", ca_file=str(certs.ca_file))
        code, _ = await send(r.port, message(to=STAFF), [STAFF])
        assert code == 250 and len(up.messages) == 1
    finally:
        await up.stop()


async def test_a_renewed_internal_ca_applies_on_reload(tmp_path: Path,
                                                      make_relay: Callable[..., Any]) -> None:
    # The CA file keeps its path but gets the new CA: SIGHUP must use it.
    import trustme

    certs = make_certs(tmp_path)
    up = await start_upstream(tls=certs.server_context)
    bundle = tmp_path / "internal-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))  # not the CA that signed upstream
    try:
        r = await make_relay(url(up), upstream_tls="required", ca_file="internal-ca.pem")
        code, _ = await send(r.port, message(to=STAFF), [STAFF])
        assert code == 451 and up.messages == []  # unverified: nothing sent
        bundle.write_bytes(certs.ca_file.read_bytes())
        r.relay.reload()  # what SIGHUP does; [upstream] itself is unchanged
        code, _ = await send(r.port, message(to=STAFF), [STAFF])
        assert code == 250 and len(up.messages) == 1
    finally:
        await up.stop()


def test_config_check_names_an_unreadable_upstream_ca(tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:2587", upstream_tls="required",
                       ca_file="missing-ca.pem")
    r = subprocess.run([sys.executable, "-m", "securemail", "config", "check", "-c", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "upstream.ca_file" in r.stderr and str(tmp_path / "missing-ca.pem") in r.stderr


async def test_upstream_down_then_retry_delivers_exactly_once(
        make_relay: Callable[..., Any]) -> None:
    up = await start_upstream()
    port = up.port
    r = await make_relay(url(up))
    await up.stop()
    data = message(to=STAFF)
    code, _ = await send(r.port, data, [STAFF])
    assert code == 451
    up = await start_upstream(port=port)
    try:
        code, _ = await send(r.port, data, [STAFF])  # the sender (Postfix) retries
        assert code == 250
        assert [m.data for m in up.messages] == [data]
    finally:
        await up.stop()


async def test_partial_deferral_retry_sends_only_the_rest(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    """One recipient accepted, one deferred: 451; the retry must not send the
    accepted recipient a second copy."""
    other = "partner@riverside.example"
    upstream.handler.rcpt_replies[other] = "452 4.2.2 mailbox full"
    r = await make_relay(url(upstream))
    data = message(to=f"{STAFF}, {other}")
    code, _ = await send(r.port, data, [STAFF, other])
    assert code == 451
    del upstream.handler.rcpt_replies[other]
    code, _ = await send(r.port, data, [STAFF, other])
    assert code == 250
    got = sorted(rcpt for m in upstream.messages for rcpt in m.rcpt_tos)
    assert got == sorted([STAFF, other])


async def test_partial_refusal_is_250_and_sender_is_told(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    gone = "former@riverside.example"
    upstream.handler.rcpt_replies[gone] = "550 5.1.1 no such user"
    r = await make_relay(url(upstream))
    code, _ = await send(r.port, message(to=f"{STAFF}, {gone}"), [STAFF, gone])
    assert code == 250
    delivered = [m for m in upstream.messages if m.mail_from != "<>" and m.mail_from]
    notices = [m for m in upstream.messages if m.mail_from in ("", "<>")]
    assert [m.rcpt_tos for m in delivered] == [[STAFF]]
    assert [m.rcpt_tos for m in notices] == [[SENDER]]
    assert gone.encode() in notices[0].data
    # From the practice's domain (what DKIM signs for: DMARC alignment), not the host name.
    assert b"From: Mail Delivery System <MAILER-DAEMON@riverside.example>" in notices[0].data


async def test_every_recipient_refused_is_550(make_relay: Callable[..., Any],
                                              upstream: Upstream) -> None:
    upstream.handler.rcpt_replies[STAFF] = "550 5.1.1 no such user"
    r = await make_relay(url(upstream))
    code, text = await send(r.port, message(to=STAFF), [STAFF])
    assert (code, text) == (550, "5.1.1 The receiving server did not accept this message"
                                 " for any recipient (it replied 550 5.1.1)")
    assert r.listeners.state.metrics.messages["refused"] == 1


@pytest.mark.parametrize(("upstream_said", "expected"), [
    ("552 5.3.4 Message size exceeds fixed limit", (552, "5.3.4")),
    ("554 5.7.1 Rejected as spam", (554, "5.7.1")),
    ("500 Line too long", (554, "5.0.0")),  # a syntax code would blame the client's command
])
async def test_a_message_refused_after_its_data_passes_the_reason_on(
        make_relay: Callable[..., Any], upstream: Upstream, upstream_said: str,
        expected: tuple[int, str]) -> None:
    upstream.handler.data_reply = upstream_said
    r = await make_relay(url(upstream))
    code, text = await send(r.port, message(to=STAFF), [STAFF])
    assert (code, text.split()[0]) == expected
    assert text.endswith(f"(it replied {upstream_said.split()[0]}"
                         f"{' ' + upstream_said.split()[1] if upstream_said[4] == '5' else ''})")
    assert "spam" not in text and "Line too long" not in text  # upstream's own text stays out


async def test_one_merged_log_line_per_message(make_relay: Callable[..., Any],
                                               upstream: Upstream,
                                               caplog: pytest.LogCaptureFixture) -> None:
    r = await make_relay(url(upstream))
    with caplog.at_level(logging.INFO, logger="securemail.message"):
        await send(r.port, message(to=STAFF), [STAFF])
    records = [rec for rec in caplog.records if rec.name == "securemail.message"]
    assert len(records) == 1
    event = records[0].event  # type: ignore[attr-defined]
    assert event["smtp"]["reply"] == "250 2.0.0"
    assert event["recipients"][0]["domain"] == "riverside.example"
    assert "colleague" not in str(event) and "Lunch" not in str(event)


async def test_a_directory_import_reaches_the_running_relay_without_a_reload(
        tmp_path: Path, make_relay: Callable[..., Any], upstream: Upstream,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import securemail.relay as relay_module
    from securemail.directory import read_directory_file, store_entries
    from securemail.store.sqlite import open_database

    monkeypatch.setattr(relay_module, "DIRECTORY_CHECK_SECONDS", 0.0)
    r = await make_relay(url(upstream))
    to_mom = message(to="jane@mail.example", cc="mom@mail.example")
    code, text = await send(r.port, to_mom, ["jane@mail.example", "mom@mail.example"])
    assert code == 550 and "unauthorised-recipient" in text  # mom is nobody yet
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("id,addresses,contacts\nc-1001,jane@mail.example,"
                        "mom@mail.example (mother)\n")
    other_process = open_database(r.settings.storage.sqlite_path)  # what the CLI does
    store_entries(other_process, read_directory_file(contacts), "2026-06-01T00:00:00+00:00")
    other_process.close()
    code, text = await send(r.port, to_mom, ["jane@mail.example", "mom@mail.example"])
    # Now an authorised contact: client mail, which needs the portal (disabled here).
    assert code == 550 and "unauthorised-recipient" not in text and "portal-disabled" in text


async def test_the_recipient_local_part_keeps_its_case_upstream(
        make_relay: Callable[..., Any], upstream: Upstream) -> None:
    """RFC 5321 2.4: a relay preserves the local part's case; the domain may be folded."""
    r = await make_relay(url(upstream))
    given = "Colleague.Name@Riverside.Example"
    code, _ = await send(r.port, message(to=given), [given])
    assert code == 250
    assert [m.rcpt_tos for m in upstream.messages] == [["Colleague.Name@riverside.example"]]
