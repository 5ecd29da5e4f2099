"""POST bodies are bounded while they stream in, and forged POSTs are refused
before a byte of the body is read: a real uvicorn server, a raw socket and a
chunked upload with no Content-Length."""

from __future__ import annotations

import asyncio
import secrets
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from securemail.portal.app import MAX_BODY, create_app
from securemail.testing import build_message

from .conftest import CLIENT, STAFF, Portal

MB = 1024 * 1024
SENT_AT_MOST = 48 * MB  # what the client is willing to push before it gives up


class Counting:
    """Counts the body bytes the portal app actually pulled from the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app, self.consumed = app, 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.consumed += len(message.get("body", b""))
            return message

        await self.app(scope, counted, send)


@dataclass
class Server:
    port: int
    app: Counting


@pytest.fixture(scope="module")
def server(portal: Portal) -> Iterator[Server]:
    async def reply_sender(raw: bytes, mail_from: str, rcpt_to: str) -> None:
        await portal.relay.send(raw, mail_from=mail_from, rcpt_tos=[rcpt_to])

    app = Counting(create_app(portal.service, reply_sender=reply_sender))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    done = asyncio.run_coroutine_threadsafe(srv.serve(sockets=[sock]), portal.loop)
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        yield Server(sock.getsockname()[1], app)
    finally:
        srv.should_exit = True
        done.result(timeout=15)


def chunked_upload(port: int, path: str, headers: dict[str, str]) -> tuple[int | None, int]:
    """Push a multipart file upload in 1 MiB chunks until the server answers (or
    drops the connection). Returns (HTTP status or None, bytes pushed)."""
    boundary = "XyZ"
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    s.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
               f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode())
    first = (f'--{boundary}\r\nContent-Disposition: form-data; name="attachment"; '
             'filename="a.bin"\r\nContent-Type: application/octet-stream\r\n\r\n').encode()
    block = b"A" * MB
    sent = 0
    answer = b""
    try:
        s.sendall(f"{len(first):x}\r\n".encode() + first + b"\r\n")
        while sent < SENT_AT_MOST:
            if select.select([s], [], [], 0)[0]:
                break
            s.sendall(f"{len(block):x}\r\n".encode() + block + b"\r\n")
            sent += len(block)
        else:
            end = f"\r\n--{boundary}--\r\n".encode()
            s.sendall(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")
        answer = s.recv(4096)
    except OSError:
        pass  # the server closed on us mid-upload: that is the point
    finally:
        s.close()
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else None
    return status, sent


def sealed_id(portal: Portal) -> str:
    raw = build_message(sender=STAFF, to=[CLIENT], subject="s", body="b",
                        message_id="<upload-limit@riverside.example>")
    return portal.service.seal(raw, message_id="<upload-limit@riverside.example>",
                               sender=STAFF, recipient=CLIENT, now=datetime.now(UTC)).id


@pytest.mark.parametrize("path", ["code", "verify", "downloaded", "reply"])
def test_forged_chunked_post_is_refused_before_the_body_is_read(
        server: Server, path: str) -> None:
    before = server.app.consumed
    status, sent = chunked_upload(server.port, f"/m/{'A' * 24}/{path}",
                                  {"X-Forwarded-For": f"10.1.0.{secrets.randbelow(250)}"})
    assert server.app.consumed == before  # not one body byte read
    assert status in (403, None)
    assert sent < SENT_AT_MOST


def test_unknown_id_with_a_cookie_is_refused_before_the_body_is_read(portal: Portal,
                                                                    server: Server) -> None:
    before = server.app.consumed
    browser = secrets.token_urlsafe(32)
    status, sent = chunked_upload(server.port, f"/m/{'B' * 24}/reply",
                                  {"Cookie": f"__Host-sm_browser={browser}",
                                   "X-CSRF-Token": portal.service.secret.mac("csrf", browser,
                                                                            "B" * 24)})
    assert server.app.consumed == before
    assert status in (404, None)
    assert sent < SENT_AT_MOST


def test_bad_header_token_is_refused_before_the_body_is_read(portal: Portal,
                                                             server: Server) -> None:
    pid = sealed_id(portal)
    before = server.app.consumed
    status, _ = chunked_upload(server.port, f"/m/{pid}/reply",
                               {"Cookie": f"__Host-sm_browser={secrets.token_urlsafe(32)}",
                                "X-CSRF-Token": "0" * 64})
    assert server.app.consumed == before
    assert status in (403, None)


@pytest.mark.parametrize("path", ["code", "verify", "session", "downloaded", "reply"])
def test_missing_header_token_is_refused_before_the_body_is_read(portal: Portal, server: Server,
                                                                path: str) -> None:
    """A browser cookie but no X-CSRF-Token header (a token in the form body
    is not looked for): 403 before a byte of the body is read."""
    pid = sealed_id(portal)
    before = server.app.consumed
    status, sent = chunked_upload(server.port, f"/m/{pid}/{path}",
                                  {"Cookie": f"__Host-sm_browser={secrets.token_urlsafe(32)}",
                                   "X-Forwarded-For": f"10.2.0.{secrets.randbelow(250)}"})
    assert server.app.consumed == before
    assert status in (403, None)
    assert sent < SENT_AT_MOST


def test_oversized_chunked_body_stops_at_the_limit(portal: Portal, server: Server) -> None:
    """A genuine browser (cookie + token), but a body past the limit and no
    Content-Length: the server stops reading once the limit is passed."""
    pid = sealed_id(portal)
    browser = secrets.token_urlsafe(32)
    headers = {"Cookie": f"__Host-sm_browser={browser}",
               "X-CSRF-Token": portal.service.secret.mac("csrf", browser, pid)}
    before = server.app.consumed
    status, sent = chunked_upload(server.port, f"/m/{pid}/reply", headers)
    assert server.app.consumed - before <= MAX_BODY + 2 * MB
    assert status in (413, None)
    assert sent < SENT_AT_MOST
