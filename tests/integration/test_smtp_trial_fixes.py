"""SMTP defects found in a security trial, against the real relay, a real
aiosmtpd upstream and raw SMTP over loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.integration.relay_support import Upstream, run_relay, write_config

SENDER = "dr@riverside.example"
GOOD = "colleague@riverside.example"


async def _dialogue(port: int, lines: list[bytes]) -> list[bytes]:
    """Each chunk sent, then its reply (every line of a multi-line one)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = [await asyncio.wait_for(reader.readline(), 5)]
    for chunk in lines:
        writer.write(chunk)
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            replies.append(line)
            if line[3:4] != b"-" or not line:
                break
    writer.close()
    return [r for r in replies if r[3:4] != b"-"]


async def test_an_invisible_character_in_an_address_is_refused_not_deferred_forever(
        tmp_path: Path, upstream: Upstream) -> None:
    # U+200B in a recipient passed RCPT, then every DATA got 451 (the upstream
    # client refused it): the good co-recipient never got the message either.
    r = await run_relay(write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{upstream.port}"))
    try:
        replies = await _dialogue(r.port, [
            b"EHLO client.test\r\n", f"MAIL FROM:<{SENDER}> SMTPUTF8\r\n".encode(),
            f"RCPT TO:<{GOOD}>\r\n".encode(), "RCPT TO:<s\u200b2@riverside.example>\r\n".encode(),
            b"DATA\r\n", f"From: {SENDER}\r\nTo: {GOOD}\r\nSubject: rota\r\n\r\nhi\r\n.\r\n"
            .encode(), "MAIL FROM:<\"a\u2028b\"@riverside.example> SMTPUTF8\r\n".encode(),
            b"QUIT\r\n"])
        codes = [line[:9] for line in replies]
        assert codes[3:5] == [b"250 2.1.5", b"553 5.1.3"]  # the invisible one, alone, at RCPT
        assert codes[6].startswith(b"250")  # the message went to the good recipient
        assert codes[7] == b"501 5.1.7"  # a sender with a line separator, at MAIL
        assert [m.rcpt_tos for m in upstream.messages] == [[GOOD]]
    finally:
        await r.stop()
