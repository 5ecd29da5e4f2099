"""The submission listener: STARTTLS before AUTH, argon2 users, sender binding."""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest
from argon2 import PasswordHasher

from securemail.errors import ConfigError
from securemail.smtp_auth import load_users
from tests.integration.relay_support import (
    Certs,
    FakeRelay,
    RunningRelay,
    Upstream,
    make_certs,
    message,
    run_relay,
    write_config,
)

# Cheap argon2 parameters: the tests check behaviour, not hashing cost.
HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def submission_config(tmp_path: Path, upstream: Upstream) -> tuple[Path, Certs]:
    """A config with the submission listener and two users, frontdesk and drlee."""
    certs = make_certs(tmp_path)
    users = tmp_path / "users.toml"
    users.write_text(f"""
[[users]]
name = "frontdesk"
password_hash = "{HASHER.hash('correct horse')}"
addresses = ["frontdesk@riverside.example", "@billing.riverside.example"]

[[users]]
name = "drlee"
password_hash = "{HASHER.hash('staple battery')}"
addresses = ["dr.lee@riverside.example"]
""")
    cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}", extra=f"""
[submission]
enabled = true
listen = "127.0.0.1:10587"
tls_cert = "{certs.cert_file}"
tls_key = "{certs.key_file}"
users_file = "users.toml"
""", relay_extra='trusted_networks = ["10.0.0.0/8"]\n')
    return cfg, certs


@pytest.fixture
async def relay(tmp_path: Path, upstream: Upstream
                ) -> AsyncIterator[tuple[RunningRelay, ssl.SSLContext]]:
    cfg, certs = submission_config(tmp_path, upstream)
    r = await run_relay(cfg, FakeRelay)
    client_ctx = ssl.create_default_context(cafile=str(certs.ca_file))
    yield r, client_ctx
    await r.stop()


async def _client(r: RunningRelay, ctx: ssl.SSLContext, *, tls: bool = True) -> aiosmtplib.SMTP:
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=r.port_of("submission"), start_tls=False,
                        tls_context=ctx, timeout=10)
    await c.connect()
    await c.ehlo()
    if tls:
        await c.starttls()
        await c.ehlo()
    return c


async def test_nothing_before_starttls_and_no_auth_offered_in_clear(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx, tls=False)
    assert "auth" not in c.esmtp_extensions and "starttls" in c.esmtp_extensions
    with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
        await c.mail("frontdesk@riverside.example")
    assert exc.value.code == 530
    c.close()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
async def test_authenticated_user_sends_as_own_address(
        relay: tuple, upstream: Upstream, mechanism: str) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    assert mechanism in c.supported_auth_methods or mechanism.lower() in c.server_auth_methods
    if mechanism == "PLAIN":
        await c.auth_plain("frontdesk", "correct horse")
    else:
        await c.auth_login("frontdesk", "correct horse")
    errors, reply = await c.sendmail("frontdesk@riverside.example",
                                     ["colleague@riverside.example"],
                                     message(frm="Front Desk <frontdesk@riverside.example>"))
    assert errors == {} and reply.startswith("2.0.0")
    await c.quit()
    call = r.relay.calls[0]
    assert call["auth_identity"] == "frontdesk"
    assert call["tls"] is not None and call["tls"].version in ("TLSv1.2", "TLSv1.3")
    assert len(upstream.messages) == 1


async def test_domain_entry_allows_any_address_in_that_domain(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    await c.auth_plain("frontdesk", "correct horse")
    errors, _ = await c.sendmail("claims@billing.riverside.example",
                                 ["colleague@riverside.example"],
                                 message(frm="claims@billing.riverside.example"))
    assert errors == {}
    c.close()


async def test_a_from_header_the_user_may_not_use_is_refused(
        relay: tuple, upstream: Upstream) -> None:
    """The envelope is the user's own, the visible From is the director's: 553."""
    r, ctx = relay
    c = await _client(r, ctx)
    await c.auth_plain("frontdesk", "correct horse")
    for frm in ("director@riverside.example",
                "frontdesk@riverside.example, director@riverside.example",
                # a display name that is another address: what the reader sees
                '"director@riverside.example" <frontdesk@riverside.example>',
                "=?utf-8?q?director=40riverside.example?= <frontdesk@riverside.example>",
                "ceo@bänk.example",        # 8-bit (SMTPUTF8) header: read as UTF-8, refused
                "undisclosed:;"):          # no author address at all
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await c.sendmail("frontdesk@riverside.example", ["colleague@riverside.example"],
                             message(frm=frm))
        assert (exc.value.code, exc.value.message.split()[0]) == (553, "5.7.1"), frm
    sender = message(frm="frontdesk@riverside.example").replace(
        b"\r\nTo:", b"\r\nSender: director@riverside.example\r\nTo:")
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await c.sendmail("frontdesk@riverside.example", ["colleague@riverside.example"], sender)
    assert exc.value.code == 553
    assert exc.value.message.startswith("5.7.1 Sender: ")  # names the header at fault
    # Nor as who resent it (it went through unchecked, and was DKIM-signed).
    for header in ("Resent-From", "Resent-Sender"):
        resent = message(frm="frontdesk@riverside.example").replace(
            b"\r\nTo:", f"\r\n{header}: director@riverside.example\r\nTo:".encode())
        with pytest.raises(aiosmtplib.SMTPDataError) as exc:
            await c.sendmail("frontdesk@riverside.example", ["colleague@riverside.example"],
                             resent)
        assert exc.value.code == 553 and exc.value.message.startswith(f"5.7.1 {header}: ")
    c.close()
    assert upstream.messages == []


async def test_a_sender_given_before_the_login_cannot_escape_its_check(
        relay: tuple, upstream: Upstream) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    for sender in ("ceo@riverside.example", ""):
        code, text = await c.execute_command(f"MAIL FROM:<{sender}>".encode())
        assert (code, text) == (530, "5.7.0 Authentication required")
    await c.auth_plain("frontdesk", "correct horse")
    await c.mail("frontdesk@riverside.example")
    # RFC 4954 4: no AUTH inside a transaction (a second login could swap identities).
    code, text = await c.execute_command(b"AUTH PLAIN AGZyb250ZGVzawBjb3JyZWN0IGhvcnNl")
    assert (code, text.split()[0]) == (503, "5.5.1")
    c.close()
    assert upstream.messages == []


async def test_mail_from_with_the_auth_parameter_is_accepted(
        relay: tuple, upstream: Upstream) -> None:
    # RFC 4954 5: Postfix (smtp_send_dummy_mail_auth) and Exim send AUTH=<>.
    r, ctx = relay
    c = await _client(r, ctx)
    await c.auth_plain("frontdesk", "correct horse")
    for params in (["AUTH=<>"], ["AUTH=frontdesk@riverside.example", "SIZE=300"]):
        await c.mail("frontdesk@riverside.example", options=params)
        await c.rcpt("colleague@riverside.example")
        code, _ = await c.data(message(frm="frontdesk@riverside.example"))
        assert code == 250
    c.close()
    assert len(upstream.messages) == 2


async def test_starttls_twice_is_refused_and_the_session_goes_on(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    code, text = await c.execute_command(b"STARTTLS")
    assert (code, text) == (503, "5.5.1 TLS is already active")
    assert (await c.noop())[0] == 250
    c.close()


async def test_data_before_mail_says_mail_is_needed(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    await c.auth_plain("frontdesk", "correct horse")
    code, text = await c.execute_command(b"DATA")
    assert (code, text) == (503, "5.5.1 Error: need MAIL command")
    c.close()


async def test_repeated_failed_logins_end_the_session(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    codes = []
    for _ in range(3):
        try:
            await c.auth_plain("frontdesk", "guess")
        except aiosmtplib.SMTPAuthenticationError as exc:
            codes.append(exc.code)
        except aiosmtplib.SMTPException:
            codes.append(-1)
    assert codes[:2] == [535, 535] and codes[2] in (421, -1)
    with pytest.raises(aiosmtplib.SMTPException):
        await c.auth_plain("frontdesk", "correct horse")  # the connection is gone
    c.close()


async def test_failed_logins_count_across_sessions_from_one_address(
        relay: tuple, caplog: pytest.LogCaptureFixture) -> None:
    # Reconnecting must not reset a password guesser's budget: after 10 failures
    # for a user from one address in 15 minutes, AUTH as that user is refused
    # even with the right password.
    from securemail.smtp import MAX_AUTH_FAILURES_PER_USER

    r, ctx = relay
    failures = 0
    with caplog.at_level(logging.WARNING, logger="securemail"):
        while failures < MAX_AUTH_FAILURES_PER_USER:
            c = await _client(r, ctx)
            for _ in range(2):  # stay under the per-session limit
                with pytest.raises(aiosmtplib.SMTPAuthenticationError):
                    await c.auth_plain("frontdesk", f"guess {failures}")
                failures += 1
            c.close()
        c = await _client(r, ctx)
        with pytest.raises(aiosmtplib.SMTPException) as exc:
            await c.auth_plain("frontdesk", "correct horse")
        c.close()
    assert getattr(exc.value, "code", None) in (421, None)
    logged = [rec.getMessage() for rec in caplog.records]
    assert sum("login failed for user frontdesk from 127.0.0.1" in m for m in logged) == failures
    assert any("too many failed logins" in m for m in logged)
    assert not any("guess" in m for m in logged)  # the password is never logged


async def test_other_sender_address_is_refused(relay: tuple, upstream: Upstream,
                                               caplog: pytest.LogCaptureFixture) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    await c.auth_plain("frontdesk", "correct horse")
    with caplog.at_level(logging.WARNING, logger="securemail"), \
            pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await c.mail("director@riverside.example")
    assert (exc.value.code, exc.value.message.split()[0]) == (553, "5.7.1")
    c.close()
    assert upstream.messages == []
    # The attempt is logged for the operator: who tried, which domain, no local part.
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "user frontdesk may not send as an address at riverside.example" in logged
    assert "director" not in logged


async def test_wrong_password_and_unknown_user_are_535(relay: tuple) -> None:
    r, ctx = relay
    for user, password in (("frontdesk", "wrong"), ("nobody", "correct horse")):
        c = await _client(r, ctx)
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as exc:
            await c.auth_plain(user, password)
        assert exc.value.code == 535
        c.close()


async def test_unauthenticated_submission_cannot_relay(relay: tuple, upstream: Upstream) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    # Refused at MAIL already: a sender given before a login would escape the
    # login's sender check.
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as exc:
        await c.mail("frontdesk@riverside.example")
    assert exc.value.code == 530
    with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
        await c.rcpt("colleague@riverside.example")
    assert refused.value.code == 503  # no transaction was opened
    c.close()
    assert upstream.messages == []


def test_users_file_errors_name_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "users.toml"
    p.write_text('[[users]]\nname = "a"\npassword_hash = "plain"\naddresses = ["a@x.example"]\n')
    with pytest.raises(ConfigError) as exc:
        load_users(p)
    assert str(exc.value).startswith(f"{p}: users[0].password_hash:")
    with pytest.raises(ConfigError, match="not found"):
        load_users(tmp_path / "missing.toml")


async def test_commands_pipelined_behind_starttls_in_clear_are_discarded(relay: tuple) -> None:
    # CVE-2011-0411 family: plaintext injected after STARTTLS must never be read as
    # if it had come through TLS.
    r, ctx = relay
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port_of("submission"))

    async def reply() -> list[bytes]:
        lines = [await asyncio.wait_for(reader.readline(), 10)]
        while lines[-1][3:4] == b"-":
            lines.append(await asyncio.wait_for(reader.readline(), 10))
        return lines

    assert (await reply())[0].startswith(b"220")
    writer.write(b"EHLO attacker.example\r\n")
    await reply()
    writer.write(b"STARTTLS\r\nNOOP injected\r\nRSET\r\n")
    assert (await reply())[0].startswith(b"220")
    await writer.start_tls(ctx, server_hostname="localhost")
    writer.write(b"EHLO client.example\r\n")
    first = await reply()
    assert first[0].startswith(b"250-"), first  # the EHLO reply, nothing injected before it
    assert any(b"AUTH" in line for line in first)
    writer.write(b"QUIT\r\n")
    assert (await reply())[0].startswith(b"221")
    writer.close()


async def test_a_bad_certificate_on_reload_keeps_the_running_one(
        relay: tuple, tmp_path: Path) -> None:
    from securemail.config import load_settings
    from securemail.errors import ConfigError

    r, ctx = relay
    cfg = tmp_path / "securemail.toml"
    (tmp_path / "other").mkdir()
    other = make_certs(tmp_path / "other")  # a renewed certificate whose key is not there yet
    lines = [f'tls_cert = "{other.cert_file}"' if line.startswith("tls_cert") else line
             for line in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="submission.tls_cert"):
        r.listeners.prepare(load_settings(cfg))  # cert and key do not match
    c = await _client(r, ctx)  # STARTTLS still works with the running certificate
    await c.auth_plain("frontdesk", "correct horse")
    c.close()


def test_user_addresses_compare_in_either_idn_spelling() -> None:
    from securemail.smtp_auth import SubmissionUser, _normalise_entry

    user = SubmissionUser("dr", "$argon2id$x", tuple(
        _normalise_entry(a) for a in ("Dr@Zahnärzte.example", "@Bücher.example")))
    assert user.may_send_as("dr@xn--zahnrzte-3za.example")
    assert user.may_send_as("DR@zahnärzte.example")
    assert user.may_send_as("anyone@xn--bcher-kva.example")
    assert not user.may_send_as("dr@zahnarzte.example")
    assert not user.may_send_as("not an address")


async def test_help_on_the_submission_port_lists_auth(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    reply = await c.execute_command(b"HELP")
    assert reply.code == 250 and "AUTH" in reply.message.split(":", 1)[1].split()
    c.close()


async def test_the_submission_port_adds_a_trace_header_without_login_or_recipients(
        tmp_path: Path, upstream: Upstream) -> None:
    # securemail is the first server for submitted mail: RFC 5321 4.4 wants a
    # Received line; it must not reveal the login name or a Bcc recipient.
    import hashlib

    from securemail.audit.export import iter_export_records
    from securemail.store.sqlite import open_database
    from tests.integration.relay_support import run_relay

    cfg, certs = submission_config(tmp_path, upstream)
    r = await run_relay(cfg)
    try:
        client_ctx = ssl.create_default_context(cafile=str(certs.ca_file))
        c = await _client(r, client_ctx)
        await c.auth_plain("frontdesk", "correct horse")
        data = message(frm="frontdesk@riverside.example")
        await c.sendmail("frontdesk@riverside.example",
                         ["colleague@riverside.example", "hidden@riverside.example"], data)
        c.close()
    finally:
        await r.stop()
    sent = upstream.messages[0].data
    trace = sent.split(b"\r\n", 3)[:3]
    assert trace[0].startswith(b"Received: from ") and trace[0].endswith(b" ([127.0.0.1])")
    assert trace[1] == b"\tby relay.test (securemail) with ESMTPSA;"
    assert b"frontdesk" not in b"".join(trace) and b"hidden" not in b"".join(trace)
    assert sent.endswith(data)  # the rest is what the client sent
    # The audit still names the client's bytes: a retry of them is the same message.
    conn = open_database(tmp_path / "data" / "securemail.db")
    records = [rec for rec in iter_export_records(conn) if rec.get("kind") == "message"]
    conn.close()
    assert {rec["message_sha256"] for rec in records} == {hashlib.sha256(data).hexdigest()}


def test_the_trace_header_is_one_safe_header() -> None:
    import datetime as dt

    from securemail.smtp import received_header

    when = dt.datetime(2026, 11, 29, 10, 0, tzinfo=dt.UTC)
    v6 = received_header("mx.riverside.example", "laptop", "2001:db8::7", True, False, when)
    assert v6 == ("Received: from laptop ([IPv6:2001:db8::7])\r\n\tby mx.riverside.example"
                  " (securemail) with ESMTPS;\r\n\tSun, 29 Nov 2026 10:00:00 +0000\r\n")
    utf8 = received_header("mx", "pc", "10.0.0.1", True, True, when, smtputf8=True)
    assert " with UTF8SMTPSA;" in utf8  # RFC 6531 section 3.7.4
    odd = received_header("mx", "evil\r\nBcc: x@y", "10.0.0.1", False, True, when)
    assert odd.startswith("Received: from unknown ([10.0.0.1])") and "Bcc" not in odd
    assert odd.count("\r\n") == 3 and "with ESMTPA;" in odd


async def test_parallel_sessions_cannot_guess_past_the_per_client_limit(relay: tuple) -> None:
    # Each attempt is counted before the (slow) password check: fifteen
    # sessions guessing at once get at most the limit of password checks.
    from securemail.smtp import MAX_AUTH_FAILURES_PER_USER

    r, ctx = relay
    clients = [await _client(r, ctx) for _ in range(15)]

    async def guess(c: aiosmtplib.SMTP, n: int) -> int:
        try:
            await c.auth_plain("frontdesk", f"guess {n}")
        except aiosmtplib.SMTPAuthenticationError as exc:
            return exc.code
        except aiosmtplib.SMTPException:
            return -1  # refused and disconnected (421)
        return 235

    codes = await asyncio.gather(*(guess(c, n) for n, c in enumerate(clients)))
    for c in clients:
        c.close()
    assert codes.count(535) <= MAX_AUTH_FAILURES_PER_USER
    assert 235 not in codes and len(codes) == 15


async def test_the_trace_header_is_on_encrypted_and_portal_copies_too(
        tmp_path: Path, upstream: Upstream) -> None:
    # Every copy that leaves carries it, not only the pass-through one.
    cfg, certs = submission_config(tmp_path, upstream)
    cfg.write_text(cfg.read_text().replace("[portal]\nenabled = false", "[portal]\nenabled = true"))
    r = await run_relay(cfg)
    try:
        c = await _client(r, ssl.create_default_context(cafile=str(certs.ca_file)))
        await c.auth_plain("frontdesk", "correct horse")
        data = message(frm="frontdesk@riverside.example", to="jane@mail.example",
                       cc="colleague@riverside.example",
                       body="Diagnosis F32.1 for Jane, SSN 123-45-6789.")
        await c.sendmail("frontdesk@riverside.example",
                         ["jane@mail.example", "colleague@riverside.example"], data)
        c.close()
    finally:
        await r.stop()
    by_rcpt = {m.rcpt_tos[0]: m.data for m in upstream.messages}
    assert set(by_rcpt) == {"jane@mail.example", "colleague@riverside.example"}
    for copy in by_rcpt.values():  # the portal notice and the pass-through copy
        assert copy.startswith(b"Received: from ") and b"(securemail) with ESMTPSA;" in copy


async def test_parallel_logins_with_the_right_password_all_go_through(relay: tuple) -> None:
    # An app's connection pool or an office behind one NAT: checks in progress
    # make later ones wait, they do not refuse them.
    r, ctx = relay
    clients = [await _client(r, ctx) for _ in range(15)]

    async def login(c: aiosmtplib.SMTP) -> int:
        try:
            return (await c.auth_plain("frontdesk", "correct horse")).code
        except aiosmtplib.SMTPException as exc:
            return getattr(exc, "code", -1)

    codes = await asyncio.gather(*(login(c) for c in clients))
    for c in clients:
        c.close()
    assert codes == [235] * 15


async def test_hanging_up_during_the_password_check_still_counts(
        relay: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    # The argon2 check cannot be stopped once it runs: a client that hangs up
    # mid-check must not get unlimited, uncounted password checks.
    from securemail.smtp import MAX_AUTH_FAILURES_PER_USER

    r, ctx = relay
    users = next(h for h in r.listeners.handlers if h.policy.name == "submission").policy.users
    check = users.authenticate

    async def slow(name: str, password: str) -> object:
        await asyncio.sleep(0.3)
        return await check(name, password)

    monkeypatch.setattr(users, "authenticate", slow)
    for n in range(MAX_AUTH_FAILURES_PER_USER):
        c = await _client(r, ctx)
        assert c.protocol is not None
        c.protocol.write(b"AUTH PLAIN " + base64.b64encode(b"\0frontdesk\0guess %d" % n)
                         + b"\r\n")
        await asyncio.sleep(0.05)
        c.close()  # hang up while the check runs
    await asyncio.sleep(0.5)
    c = await _client(r, ctx)
    with pytest.raises(aiosmtplib.SMTPException):
        await c.auth_plain("frontdesk", "correct horse")  # blocked for this window
    c.close()


async def test_a_bare_message_from_an_app_leaves_with_date_and_message_id(
        tmp_path: Path, upstream: Upstream) -> None:
    # RFC 6409 8: scripts often submit without Date or Message-ID; RFC 5321 4.4:
    # Return-Path is set at final delivery, never by the originator.
    import email
    import hashlib

    from tests.integration.relay_support import run_relay

    cfg, certs = submission_config(tmp_path, upstream)
    r = await run_relay(cfg)
    bare = (b"Return-Path: <bounce@elsewhere.example>\r\nFrom: frontdesk@riverside.example\r\n"
            b"To: colleague@riverside.example\r\nSubject: Lunch\r\n\r\nSee you at noon.\r\n")
    try:
        c = await _client(r, ssl.create_default_context(cafile=str(certs.ca_file)))
        await c.auth_plain("frontdesk", "correct horse")
        await c.sendmail("frontdesk@riverside.example", ["colleague@riverside.example"], bare)
        c.close()
    finally:
        await r.stop()
    sent = email.message_from_bytes(upstream.messages[0].data)
    assert sent["Message-ID"] == f"<{hashlib.sha256(bare).hexdigest()[:32]}@relay.test>"
    assert email.utils.parsedate_to_datetime(sent["Date"]) is not None
    assert sent.get_all("Date") and len(sent.get_all("Date")) == 1
    assert sent["Return-Path"] is None
    assert sent.get_payload() == "See you at noon.\r\n"


async def test_replies_carry_enhanced_codes_and_pipelining_is_offered(relay: tuple) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    assert c.supports_extension("enhancedstatuscodes") and c.supports_extension("pipelining")
    await c.auth_plain("frontdesk", "correct horse")
    await c.mail("frontdesk@riverside.example")
    for command, expected in ((b"MAIL FROM:<frontdesk@riverside.example>",
                               (503, "5.5.1 Error: nested MAIL command")),
                              (b"FROB", (500, '5.5.2 Error: command "FROB" not recognized')),
                              (b"NOOP", (250, "2.0.0 OK"))):
        code, text = await c.execute_command(command)
        assert (code, text) == expected
    c.close()


async def test_a_pipelined_transaction_is_answered_in_order(
        relay: tuple, upstream: Upstream) -> None:
    r, ctx = relay
    reader, writer = await asyncio.open_connection("127.0.0.1", r.port_of("submission"))

    async def replies(count: int) -> list[bytes]:
        out: list[bytes] = []
        while len(out) < count:
            line = await asyncio.wait_for(reader.readline(), 10)
            if line[3:4] == b" ":
                out.append(line.rstrip())
        return out

    await replies(1)
    writer.write(b"EHLO client.example\r\n")
    await replies(1)
    writer.write(b"STARTTLS\r\n")
    await replies(1)
    await writer.start_tls(ctx, server_hostname="localhost")
    login = base64.b64encode(b"\0frontdesk\0correct horse")
    writer.write(b"EHLO client.example\r\nAUTH PLAIN " + login + b"\r\n")
    await replies(2)
    writer.write(b"MAIL FROM:<frontdesk@riverside.example>\r\n"
                 b"RCPT TO:<colleague@riverside.example>\r\nDATA\r\n")  # one write (RFC 2920)
    assert [x[:3] for x in await replies(3)] == [b"250", b"250", b"354"]
    writer.write(message(frm="frontdesk@riverside.example") + b".\r\nQUIT\r\n")
    assert [x[:3] for x in await replies(2)] == [b"250", b"221"]
    writer.close()
    assert len(upstream.messages) == 1


async def test_one_users_failed_logins_do_not_lock_out_the_office(relay: tuple) -> None:
    # Everyone behind an office's one public address (NAT) was refused for 15
    # minutes once a phone with an old password had failed ten times.
    from securemail.smtp import MAX_AUTH_FAILURES_PER_ADDRESS, MAX_AUTH_FAILURES_PER_USER

    r, ctx = relay

    async def login(user: str, password: str) -> str:
        c = await _client(r, ctx)
        try:
            return str((await c.auth_plain(user, password)).code)
        except aiosmtplib.SMTPException as exc:
            return f"{getattr(exc, 'code', '-')} {getattr(exc, 'message', '')}"
        finally:
            c.close()

    for n in range(MAX_AUTH_FAILURES_PER_USER):
        assert (await login("frontdesk", f"old password {n}")).startswith("535")
    refused = await login("frontdesk", "correct horse")
    assert refused.startswith("421") and "for this user" in refused, refused
    assert await login("drlee", "staple battery") == "235"  # the colleague is not locked out
    # Many names tried from one address still run out the address's budget.
    for n in range(MAX_AUTH_FAILURES_PER_ADDRESS - MAX_AUTH_FAILURES_PER_USER):
        assert (await login(f"guess{n}", "x")).startswith("535")
    refused = await login("drlee", "staple battery")
    assert refused.startswith("421") and "from your address" in refused, refused



async def test_a_login_asking_to_act_as_another_user_is_refused(relay: tuple) -> None:
    # RFC 4616: an authorization identity other than the login's own must fail
    # (it was accepted silently, the session acting as the login's user).
    r, ctx = relay
    c = await _client(r, ctx)
    try:
        code, text = await c.execute_command(
            b"AUTH PLAIN " + base64.b64encode(b"drlee\0frontdesk\0correct horse"))
        assert code == 535 and "another user" in text
        code, _ = await c.execute_command(  # the same name, or none, is fine
            b"AUTH PLAIN " + base64.b64encode(b"frontdesk\0frontdesk\0correct horse"))
        assert code == 235
    finally:
        c.close()


async def test_a_message_sent_with_smtputf8_is_traced_as_such(
        tmp_path: Path, upstream: Upstream) -> None:
    cfg, certs = submission_config(tmp_path, upstream)
    r = await run_relay(cfg)
    try:
        c = await _client(r, ssl.create_default_context(cafile=str(certs.ca_file)))
        await c.auth_plain("frontdesk", "correct horse")
        await c.sendmail("frontdesk@riverside.example", ["colleague@riverside.example"],
                         message(frm="frontdesk@riverside.example", subject="Café"),
                         mail_options=["SMTPUTF8"])
        c.close()
    finally:
        await r.stop()
    [got] = upstream.messages
    assert b"(securemail) with UTF8SMTPSA;" in got.data  # RFC 6531 3.7.4 (was ESMTPSA)


@pytest.mark.parametrize("frm", [
    '"Front Desk" <frontdesk@riverside.example>',
    '"frontdesk@riverside.example" <frontdesk@riverside.example>',
    '"Billing (billing@billing.riverside.example)." <frontdesk@riverside.example>',
    "frontdesk@riverside.example (Front Desk)",
])
async def test_a_display_name_naming_the_users_own_address_is_fine(
        relay: tuple, frm: str) -> None:
    r, ctx = relay
    c = await _client(r, ctx)
    try:
        await c.auth_plain("frontdesk", "correct horse")
        errors, _ = await c.sendmail("frontdesk@riverside.example",
                                     ["colleague@riverside.example"], message(frm=frm))
        assert errors == {}
    finally:
        c.close()
