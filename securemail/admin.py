"""``/healthz`` and ``/metrics`` on ``relay.admin_listen``: a tiny HTTP/1.0 server.

Only GET, no keep-alive, request head capped at 8 KiB: it serves a
Prometheus scraper and a load balancer's health check, nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["start_admin"]

_MAX_HEAD = 8192


async def start_admin(host: str, port: int, *, metrics: Callable[[], str],
                      healthy: Callable[[], bool],
                      not_ready: Callable[[], str] = lambda: "") -> asyncio.AbstractServer:
    """``/healthz``: the process serves (503 while draining). ``/readyz``: mail
    is getting through; ``not_ready()`` returns why not ("" when ready)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            request_line = head.split(b"\r\n", 1)[0].decode("ascii", "replace").split()
            method, path = (request_line + ["", ""])[:2]
            if method != "GET":
                status, body, ctype = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path == "/healthz":
                ok = healthy()
                status = "200 OK" if ok else "503 Service Unavailable"
                body, ctype = ("ok\n" if ok else "draining\n"), "text/plain"
            elif path == "/readyz":
                reason = "draining" if not healthy() else not_ready()
                status = "503 Service Unavailable" if reason else "200 OK"
                body, ctype = (f"{reason}\n" if reason else "ready\n"), "text/plain"
            elif path == "/metrics":
                status, body = "200 OK", metrics()
                ctype = "text/plain; version=0.0.4; charset=utf-8"
            else:
                status, body, ctype = "404 Not Found", "not found\n", "text/plain"
            data = body.encode()
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(serve, host, port, limit=_MAX_HEAD)
