"""Real Postfix in front of the relay, as docs/deploy.md sets it up:

client -> Postfix :IN (content_filter) -> securemail -> Postfix :REINJECT
-> relayhost = capturing aiosmtpd.

Postfix runs from a temporary config directory (``postfix -c DIR``) with its
own queue and data directories, on loopback ports; it needs root (master
drops privileges to the ``postfix`` user).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.integration.relay_support import (
    RunningRelay,
    Upstream,
    message,
    run_relay,
    start_upstream,
    write_config,
)

POSTFIX = "/usr/sbin/postfix"

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(not Path(POSTFIX).exists(), reason="Postfix is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="running Postfix from a temp dir needs root"),
]


def bound_socket() -> socket.socket:
    """A loopback port for Postfix, bound (not listening) until Postfix starts: meanwhile
    no other socket bound to port 0 (the relay's listeners) can be given it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


def postfix_config(root: Path, *, inbound: int, reinject: int, relay: int, capture: int) -> Path:
    conf, queue, data = root / "conf", root / "queue", root / "data"
    for d in (conf, queue, data):
        d.mkdir()
    shutil.chown(data, "postfix")
    (conf / "main.cf").write_text(textwrap.dedent(f"""\
        compatibility_level = 3.6
        queue_directory = {queue}
        data_directory = {data}
        command_directory = /usr/sbin
        daemon_directory = /usr/lib/postfix/sbin
        shlib_directory = /usr/lib/postfix
        meta_directory = /etc/postfix
        mail_owner = postfix
        setgid_group = postdrop
        syslog_name = postfix-securemail-test
        maillog_file_prefixes = {root}
        maillog_file = {root}/maillog
        myhostname = mx.riverside.example
        myorigin = riverside.example
        mydestination =
        local_recipient_maps =
        alias_maps =
        alias_database =
        inet_interfaces = 127.0.0.1
        inet_protocols = ipv4
        mynetworks = 127.0.0.0/8
        smtpd_relay_restrictions = permit_mynetworks, reject
        relayhost = [127.0.0.1]:{capture}
        smtp_dns_support_level = disabled
        smtp_tls_security_level = none
        smtpd_tls_security_level = none
        smtputf8_enable = no
        sendmail_path = /usr/sbin/sendmail
        queue_run_delay = 1s
        minimal_backoff_time = 1s
        maximal_backoff_time = 2s
        """))
    (conf / "master.cf").write_text(textwrap.dedent(f"""\
        127.0.0.1:{inbound} inet n - n - - smtpd
          -o content_filter=securemail:[127.0.0.1]:{relay}
        securemail unix - - n - 4 smtp
          -o smtp_send_xforward_command=yes
          -o disable_mime_output_conversion=yes
          -o smtp_tls_security_level=none
        127.0.0.1:{reinject} inet n - n - 10 smtpd
          -o content_filter=
          -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters
          -o smtpd_helo_restrictions=
          -o smtpd_client_restrictions=
          -o smtpd_sender_restrictions=
          -o smtpd_relay_restrictions=permit_mynetworks,reject
          -o smtpd_recipient_restrictions=permit_mynetworks,reject
          -o mynetworks=127.0.0.0/8
          -o smtpd_authorized_xforward_hosts=127.0.0.0/8
          -o message_size_limit=40960000
          -o smtpd_tls_security_level=none
          -o smtpd_sasl_auth_enable=no
        pickup    unix  n - n 60 1 pickup
          -o content_filter=securemail:[127.0.0.1]:{relay}
        cleanup   unix  n - n - 0 cleanup
        qmgr      unix  n - n 300 1 qmgr
        rewrite   unix  - - n - - trivial-rewrite
        bounce    unix  - - n - 0 bounce
        defer     unix  - - n - 0 bounce
        trace     unix  - - n - 0 bounce
        verify    unix  - - n - 1 verify
        flush     unix  n - n 1000? 0 flush
        proxymap  unix  - - n - - proxymap
        smtp      unix  - - n - - smtp
        relay     unix  - - n - - smtp
        showq     unix  n - n - - showq
        error     unix  - - n - - error
        retry     unix  - - n - - error
        discard   unix  - - n - - discard
        anvil     unix  - - n - 1 anvil
        scache    unix  - - n - 1 scache
        postlog   unix-dgram n - n - 1 postlogd
        """))
    return conf


async def postfix(conf: Path, command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        POSTFIX, "-c", str(conf), command,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(errors="replace")


async def wait_for(predicate: object, seconds: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[tuple[int, Upstream, RunningRelay, Path]]:
    async with _chain(tmp_path) as running:
        yield running


@contextlib.asynccontextmanager
async def _chain(tmp_path: Path, extra: str = ""
                 ) -> AsyncIterator[tuple[int, Upstream, RunningRelay, Path]]:
    # Postfix daemons run as "postfix" and must reach the queue: not under pytest's 0700 tmp.
    root = Path(tempfile.mkdtemp(prefix="securemail-postfix-", dir="/tmp"))
    root.chmod(0o755)
    capture = await start_upstream()
    held = [bound_socket(), bound_socket()]
    try:
        inbound, reinject = (int(s.getsockname()[1]) for s in held)
        cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{reinject}", portal=True,
                           extra=extra)
        relay = await run_relay(cfg)
    finally:
        for s in held:
            s.close()
    conf = postfix_config(root, inbound=inbound, reinject=reinject, relay=relay.port,
                          capture=capture.port)
    rc, out = await postfix(conf, "start")
    log = root / "maillog"
    try:
        assert rc == 0, f"postfix start failed: {out}"
        up = await wait_for(lambda: _listening(inbound) and _listening(reinject), 15)
        assert up, (log.read_text() if log.exists() else out)
        yield inbound, capture, relay, log
    finally:
        await postfix(conf, "stop")
        await relay.stop()
        await capture.stop()
        shutil.rmtree(root, ignore_errors=True)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_postfix_content_filter_round_trip_protects_client_mail(
        chain: tuple[int, Upstream, RunningRelay, Path]) -> None:
    inbound, capture, relay, log = chain
    staff = message(to="colleague@riverside.example", subject="Rota",
                    body="Staff meeting moved to 3pm.")
    secret = "Diagnosis F32.1, next session Tuesday"
    client_mail = message(to="jane@mail.example", subject="Your care plan",
                          body=f"Dear Jane,\r\n{secret}.\r\nDOB 1984-03-02")
    await aiosmtplib.send(staff, sender="dr@riverside.example",
                          recipients=["colleague@riverside.example"],
                          hostname="127.0.0.1", port=inbound, start_tls=False)
    await aiosmtplib.send(client_mail, sender="dr@riverside.example",
                          recipients=["jane@mail.example"],
                          hostname="127.0.0.1", port=inbound, start_tls=False)

    def arrived() -> bool:
        rcpts = {r for m in capture.messages for r in m.rcpt_tos}
        return {"colleague@riverside.example", "jane@mail.example"} <= rcpts

    ok = await wait_for(arrived, 60)
    assert ok, f"not delivered; Postfix log:\n{log.read_text() if log.exists() else ''}"
    by_rcpt = {r: m for m in capture.messages for r in m.rcpt_tos}
    staff_out = by_rcpt["colleague@riverside.example"].data
    assert b"Staff meeting moved to 3pm." in staff_out
    assert staff_out.count(b"Received:") >= 2  # passed through Postfix twice
    client_out = by_rcpt["jane@mail.example"].data
    assert secret.encode() not in client_out and b"F32.1" not in client_out
    assert b"Received:" in client_out
    # The relay saw the message from Postfix's content filter, not from the client.
    # (Its count follows its audit record: Postfix may deliver before that is done.)
    assert await wait_for(lambda: relay.listeners.state.metrics.messages["delivered"] >= 2, 10)
    assert relay.listeners.state.metrics.messages["delivered"] == 2


async def test_mail_given_to_the_sendmail_command_goes_through_securemail_too(
        chain: tuple[int, Upstream, RunningRelay, Path]) -> None:
    """Practice software, PHP mail() and cron use /usr/sbin/sendmail: that mail
    enters Postfix through pickup, which deploy.md filters too. Before, pickup
    had no filter and such mail went to the smarthost in clear."""
    inbound, capture, relay, log = chain
    conf = log.parent / "conf"
    secret = "Diagnosis F32.1, next session Tuesday"
    data = message(to="jane@mail.example", subject="From the EHR",
                   body=f"Dear Jane,\r\n{secret}.").replace(b"\r\n", b"\n")
    proc = await asyncio.create_subprocess_exec(
        "/usr/sbin/sendmail", "-C", str(conf), "-f", "dr@riverside.example", "-t",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(data), 30)
    assert proc.returncode == 0, out

    ok = await wait_for(lambda: any("jane@mail.example" in m.rcpt_tos
                                    for m in capture.messages), 60)
    assert ok, f"not delivered; Postfix log:\n{log.read_text() if log.exists() else ''}"
    sent = next(m for m in capture.messages if "jane@mail.example" in m.rcpt_tos).data
    assert secret.encode() not in sent and b"F32.1" not in sent  # the portal notice instead
    # (The relay counts it after its audit record: Postfix may deliver before that is done.)
    assert await wait_for(lambda: relay.listeners.state.metrics.messages["delivered"] >= 1, 10)
    assert relay.listeners.state.metrics.messages["delivered"] == 1


async def test_long_lines_are_re_encoded_so_postfix_does_not_break_the_dkim_signature(
        tmp_path: Path) -> None:
    """An app that writes its HTML on one line: Postfix after us breaks lines
    past 998 octets (smtp_line_length_limit), which changed the signed body
    and failed DKIM at the recipient. Sent straight to the relay (as the
    submission listener gets it), out through real Postfix to the capture."""
    import dkim

    from securemail.dkim import generate_key

    pem, txt = generate_key("ed25519")
    (tmp_path / "dkim.key").write_bytes(pem)
    extra = '[dkim]\ndomain = "riverside.example"\nselector = "sm1"\nkey_file = "dkim.key"\n'
    html = "<p>" + "Rota for next week, see the table. " * 120 + "</p>"  # one 4 KB line
    raw = (b"From: dr@riverside.example\r\nTo: colleague@riverside.example\r\n"
           b"Subject: Rota\r\nMessage-ID: <long@riverside.example>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n" + html.encode() + b"\r\n")
    async with _chain(tmp_path, extra) as (_, capture, relay, log):
        await aiosmtplib.send(raw, sender="dr@riverside.example",
                              recipients=["colleague@riverside.example"],
                              hostname="127.0.0.1", port=relay.port, start_tls=False)
        ok = await wait_for(lambda: bool(capture.messages), 60)
        assert ok, f"not delivered; Postfix log:\n{log.read_text() if log.exists() else ''}"
    sent = capture.messages[0].data
    assert max(len(line) for line in sent.split(b"\r\n")) <= 998

    def dns(name: bytes, timeout: int = 5) -> bytes:
        return txt.encode()

    assert dkim.verify(sent, dnsfunc=dns)
    import email

    body = email.message_from_bytes(sent).get_payload(decode=True)
    assert isinstance(body, bytes) and body.rstrip(b"\r\n") == html.encode()
