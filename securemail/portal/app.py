"""The recipient-facing web app (Starlette).

Pages are server-rendered; ``static/portal.js`` asks for a code, opens the
session, fetches the ciphertext and decrypts it in the browser with the key
from the URL fragment (which the server never receives).

Rules that keep it safe: a GET never sends, burns or consumes anything (mail
scanners prefetch links); every POST carries a CSRF token bound to a
``__Host-`` browser cookie; cookies are ``Secure; HttpOnly``, the session
cookies (one per message) ``SameSite=Strict``, the browser cookie, which only
binds CSRF tokens and opens nothing, ``SameSite=Lax`` (so clicking the email
link again keeps it, and the open tab's token stays valid); every response
has a strict CSP, ``no-store`` and ``no-referrer``, a 500 included.

The portal shares its event loop with the SMTP relay and the admin endpoint
(``securemail serve``): the store work (sqlite, whose statements may wait up to
the busy timeout for another writer, and whose commits fsync) runs in worker
threads, never on the loop. A store that stays locked is answered 503 ("try
again in a minute"), not 500.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import logging
import re
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import anyio.to_thread
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from securemail.errors import StoreError
from securemail.logs import exception_fields
from securemail.portal.codes import CODE_DIGITS
from securemail.portal.content import Attachment
from securemail.portal.service import CODES_PER_HOUR, PortalDenied, PortalService
from securemail.portal.store import PortalRow

__all__ = ["create_app"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

BROWSER_COOKIE = "__Host-sm_browser"
SESSION_COOKIE = "__Host-sm_session"  # + "-" + message id: one session per message
MAX_ATTACHMENT = 10 * 1024 * 1024
MAX_REPLY_TEXT = 100_000
CLIENT_POSTS = 120  # per client address per window (all POSTs together): a batch of
# messages costs about 4 each (code, verify, check-in, a download or reply)
CLIENT_WINDOW = 600.0  # seconds
MAX_BODY = MAX_ATTACHMENT + MAX_REPLY_TEXT * 4 + 65536  # one POST, multipart overhead included
CSRF_HEADER = "x-csrf-token"
_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{32,64}")
RETRY_AFTER = 60  # seconds: what a 503 (store busy) asks the browser to wait

# Inline styles are allowed for the sandboxed HTML body (srcdoc inherits this
# policy); scripts are 'self' only, and nothing may load from another origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
       "img-src 'self' data: blob:; connect-src 'self'; frame-src 'self' blob:; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")

STATUS_CODE = {"missing": 404, "expired": 410, "revoked": 410, "purged": 410, "locked": 423,
               "rate-limited": 429, "wrong-code": 400, "stale-code": 400, "code-length": 400,
               "no-session": 401,
               "csrf": 403,
               "delivery-failed": 503, "too-large": 413, "bad-request": 400,
               "undeliverable": 422, "no-reply": 409, "reply-too-long": 413,
               "unavailable": 503}

_pages = Environment(loader=PackageLoader("securemail.portal", "templates"),
                     autoescape=select_autoescape(default=True))


class SecurityHeaders:
    """Adds the same protective headers to every response, static files included."""

    def __init__(self, app: ASGIApp, *, https: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"cross-origin-opener-policy", b"same-origin"),
            (b"cross-origin-resource-policy", b"same-origin"),
            (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
        ]
        if https:
            self.headers.append((b"strict-transport-security", b"max-age=31536000"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {h for h, _ in self.headers}
                message["headers"] = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in names
                ] + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _ErrorBoundary:
    """Outside Starlette's own error handling: any exception that escapes a
    request is logged here, once, with its class and location only (never its
    message or a traceback: they can hold content), and answered with the
    branded error page if no answer was started. It is not raised on, so the
    server does not log it again with its traceback."""

    def __init__(self, app: ASGIApp, page: str) -> None:
        self.app = app
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:  # noqa: BLE001 (logged: class and location, never content)
            fields = exception_fields(exc)
            log.error("portal request failed: %s at %s", fields["exc_class"], fields["exc_at"],
                      extra={"event": {"event": "portal-error", "method": scope.get("method"),
                                       "status": 500, **fields}})
            if not started:
                await HTMLResponse(self.page, status_code=500)(scope, receive, send)


class _PortalApp(Starlette):
    """Starlette with the security headers and the error boundary around all of
    it, its ServerErrorMiddleware included: a 500 carries the same headers as
    every other answer."""

    def __init__(self, *, https: bool, error_page: str, **kwargs: Any) -> None:
        self._https = https
        self._error_page = error_page
        super().__init__(**kwargs)

    def build_middleware_stack(self) -> ASGIApp:
        inner = super().build_middleware_stack()
        return SecurityHeaders(_ErrorBoundary(inner, self._error_page), https=self._https)


async def _in_thread(call: Callable[[], _T]) -> _T:
    """Blocking store work (sqlite: a statement may wait up to the busy timeout
    for another writer, a commit fsyncs) in a worker thread, so that the event
    loop, which also serves SMTP and the admin endpoint, never waits for it."""
    return await anyio.to_thread.run_sync(call)


async def _coroutine_in_thread(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """A service coroutine with blocking store work between its awaits: run on
    an event loop of its own in a worker thread (see :func:`_in_thread`)."""
    return await anyio.to_thread.run_sync(lambda: asyncio.run(make()))


class ClientRateLimit:
    """Sliding window per client address; memory bounded by the window."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float]) -> None:
        self.limit, self.window, self.clock = limit, window, clock
        self.hits: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, client: str) -> bool:
        now = self.clock()
        q = self.hits[client]
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) >= self.limit:
            return False
        q.append(now)
        if len(self.hits) > 100_000:  # never grow without bound under a spray of addresses
            for key in [k for k, v in self.hits.items() if not v]:
                del self.hits[key]
        return True


class _BodyTooLarge(Exception):
    """The request body passed the limit while it was streaming in."""


def _limited(request: Request, limit: int) -> Request:
    """``request`` whose body reads stop (raise) once more than ``limit`` bytes came
    in, whatever Content-Length said or whether it was sent at all (chunked)."""
    received = 0

    async def receive() -> Message:
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _BodyTooLarge
        return message

    return Request(request.scope, receive)


def _client_key(host: str) -> str:
    """The rate-limit key: the address itself, or its /64 for IPv6 (one end
    site usually holds a whole /64 and can pick any address in it)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def _utcnow() -> datetime:
    return datetime.now(UTC)


def session_cookie(portal_id: str) -> str:
    """The session cookie's name for one message: several messages can be open
    in one browser at once (ids are cookie-name safe: ``[A-Za-z0-9_-]``)."""
    return f"{SESSION_COOKIE}-{portal_id}"


def _seconds(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds()))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _mask(address: str) -> str:
    local, _, domain = address.partition("@")
    return f"{local[:1]}{'•' * 3}@{domain}"


def create_app(service: PortalService, *,
               reply_sender: Callable[[bytes, str, str], Awaitable[None]] | None = None,
               now: Callable[[], datetime] = _utcnow) -> Starlette:
    settings = service.settings
    practice = settings.practice
    limiter = ClientRateLimit(CLIENT_POSTS, CLIENT_WINDOW, time.monotonic)

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        html = _pages.get_template(name).render(practice=practice, **ctx)
        return HTMLResponse(html, status_code=status)

    # Rendered now: showing it must not depend on anything that could fail later.
    error_page = _pages.get_template("error.html").render(practice=practice, busy=False)

    async def server_error(request: Request, exc: Exception) -> Response:
        # Starlette's 500 answer; _ErrorBoundary logs the exception.
        return HTMLResponse(error_page, status_code=500)

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        """The store stayed locked past the busy timeout (another process writing)
        or failed: "try again in a minute", the page or the JSON the page's
        script knows; the class and location are logged, nothing else."""
        fields = exception_fields(exc)
        log.warning("portal store unavailable: %s at %s", fields["exc_class"], fields["exc_at"],
                    extra={"event": {"event": "portal-unavailable",
                                     "method": request.method, "status": 503, **fields}})
        resp: Response
        if request.method == "GET" and not request.url.path.endswith("/sealed"):
            resp = page("error.html", 503, busy=True)
        else:
            resp = denied("unavailable")
            resp.headers["connection"] = "close"  # the body may not have been read
        resp.headers["retry-after"] = str(RETRY_AFTER)
        return resp

    def status_page(reason: str) -> HTMLResponse:
        return page("status.html", STATUS_CODE.get(reason, 400), reason=reason)

    def denied(reason: str, remaining: int | None = None) -> JSONResponse:
        body: dict[str, Any] = {"error": reason}
        if remaining is not None:
            body["remaining"] = remaining
        return JSONResponse(body, status_code=STATUS_CODE.get(reason, 400))

    def set_cookie(resp: Response, name: str, value: str, max_age: int | None, *,
                   samesite: Literal["lax", "strict"] = "strict") -> None:
        resp.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True,
                        samesite=samesite)

    def token_of(request: Request, portal_id: str) -> str | None:
        return request.cookies.get(session_cookie(portal_id))

    def csrf_token(browser: str, portal_id: str) -> str:
        return service.secret.mac("csrf", browser, portal_id)

    def too_long() -> JSONResponse:
        return JSONResponse({"error": "reply-too-long", "max": MAX_REPLY_TEXT},
                            status_code=STATUS_CODE["reply-too-long"])

    def refused(reason: str) -> JSONResponse:
        # The body may not have been read: close the connection rather than let
        # the server drain (or the client keep pushing) the rest of an upload.
        resp = denied(reason)
        resp.headers["connection"] = "close"
        return resp

    async def guard(request: Request, *,
                    replying: bool = False) -> tuple[str, dict[str, Any]] | JSONResponse:
        """Common checks for every POST: id shape, client rate, CSRF (the
        ``X-CSRF-Token`` header, which the page always sends), message state,
        then the form fields. Everything that needs no body is checked before a
        byte of it is read, and the body is counted as it streams in."""
        portal_id = request.path_params["id"]
        if not _ID.fullmatch(portal_id):
            return refused("missing")
        if not limiter.allow(_client_key(request.client.host if request.client else "")):
            return refused("rate-limited")
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if not _COOKIE_VALUE.fullmatch(browser):
            return refused("csrf")
        header_token = request.headers.get(CSRF_HEADER, "")
        if not service.secret.verify(header_token, "csrf", browser, portal_id):
            return refused("csrf")
        moment = now()
        try:
            await _in_thread(lambda: service.check(portal_id, moment))
        except PortalDenied as exc:
            return refused(exc.reason)
        if replying and reply_sender is None:
            # No pipeline to send a reply through: none is sent any other way.
            return refused("no-reply")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY:
            return refused("too-large")
        try:
            async with _limited(request, MAX_BODY).form(
                    max_files=1, max_fields=8, max_part_size=MAX_REPLY_TEXT * 4) as form:
                fields: dict[str, Any] = {}
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        data = await value.read(MAX_ATTACHMENT + 1)
                        if data or value.filename:
                            fields[key] = (value.filename or "", value.content_type or "", data)
                    else:
                        fields[key] = value
        except _BodyTooLarge:
            return refused("too-large")
        except HTTPException as exc:
            # A text field past max_part_size: only a reply's text can be that long.
            if "maximum size" in str(exc.detail):
                resp = too_long()
                resp.headers["connection"] = "close"  # the rest was not read
                return resp
            return refused("bad-request")
        return portal_id, fields

    async def index(request: Request) -> Response:
        return page("index.html")

    async def landing(request: Request) -> Response:
        portal_id = request.path_params["id"]
        if not _ID.fullmatch(portal_id):
            return status_page("missing")
        moment = now()

        def read() -> tuple[PortalRow, str, tuple[datetime, datetime] | None]:
            row = service.check(portal_id, moment)
            # A code already on its way (a second tab, a reload): offer to type it
            # rather than replace it. A read only: a GET changes nothing.
            return row, service.reply_address(row), service.code_sent(portal_id, now=moment)

        try:
            row, reply_address, sent = await _in_thread(read)
        except PortalDenied as exc:
            return status_page(exc.reason)
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if not _COOKIE_VALUE.fullmatch(browser):
            browser = secrets.token_urlsafe(32)
        if reply_sender is None:
            reply_state = "off"  # replies go through the relay pipeline or not at all
        else:
            reply_state = "ok" if reply_address else "no-address"
        resp = page("landing.html", portal_id=portal_id, csrf=csrf_token(browser, portal_id),
                    masked=_mask(row.recipient), expires=row.expires.strftime("%d %B %Y"),
                    reply_state=reply_state, reply_address=reply_address,
                    reply_name=row.reply_name or "", max_reply=MAX_REPLY_TEXT,
                    code_sent=_iso(sent[0]) if sent else "",
                    code_sent_time=sent[0].strftime("%H:%M UTC") if sent else "",
                    code_valid_for=_seconds(sent[1] - moment) if sent else 0)
        # Lax: a click on the email link (a cross-site navigation) must send it
        # back, or a new one would void the CSRF token of a tab already open.
        set_cookie(resp, BROWSER_COOKIE, browser, None, samesite="lax")
        return resp

    async def send_code(request: Request) -> Response:
        checked = await guard(request)
        if isinstance(checked, Response):
            return checked
        portal_id, moment = checked[0], now()
        try:
            await _coroutine_in_thread(lambda: service.request_code(portal_id, now=moment))
        except PortalDenied as exc:
            if exc.reason == "rate-limited":
                # The message's limit of codes (not the per-client one, which
                # guard() answers): the page says how many codes an hour.
                return JSONResponse({"error": "rate-limited", "codes_per_hour": CODES_PER_HOUR},
                                    status_code=STATUS_CODE["rate-limited"])
            return denied(exc.reason)
        return JSONResponse({"ok": True})

    async def verify(request: Request) -> Response:
        checked = await guard(request)
        if isinstance(checked, Response):
            return checked
        code = checked[1].get("code")
        if not isinstance(code, str) or not re.fullmatch(r"\s*[0-9 ]{4,12}\s*", code):
            return denied("bad-request")
        if len(re.sub(r"\s", "", code)) != CODE_DIGITS:
            # A typo (a digit missed or doubled): it could never be right, so it
            # is not counted as a wrong try.
            return denied("code-length")
        portal_id, held, moment = checked[0], token_of(request, checked[0]), now()
        try:
            token = await _in_thread(lambda: service.verify_code(portal_id, code, now=moment,
                                                                 session_token=held))
        except PortalDenied as exc:
            if exc.stale:
                return denied("stale-code")
            return denied(exc.reason, exc.remaining)
        # The page asks POST /m/{id}/session when the session ends (keep_alive).
        resp = JSONResponse({"ok": True})
        if token == held:  # the code that opened this browser's live session, again
            return resp
        absolute = service.session_limits()[1]
        # The cookie may outlive the session's idle end: the server decides when
        # the session ends (sliding), never later than the absolute cap.
        set_cookie(resp, session_cookie(checked[0]), token, _seconds(absolute))
        return resp

    async def keep_alive(request: Request) -> Response:
        checked = await guard(request)
        if isinstance(checked, Response):
            return checked
        portal_id, token, moment = checked[0], token_of(request, checked[0]), now()
        try:
            ends, final = await _in_thread(lambda: service.keep_alive(portal_id, token,
                                                                      now=moment))
        except PortalDenied as exc:
            return denied(exc.reason)
        return JSONResponse({"ok": True, "expires_in": _seconds(ends - now()), "final": final,
                             "max_minutes": _seconds(service.session_limits()[1]) // 60})

    async def sign_out(request: Request) -> Response:
        """End this browser's session for the message at once (the "Sign out"
        button) and clear its cookie; answered the same whether or not a
        session was still live.

        Only the CSRF check applies: a reader signing out must never be refused
        (a busy network hitting the rate limit, a message locked or withdrawn
        meanwhile would leave the session live). Without a session cookie there
        is nothing to end, and such requests count against the rate limit."""
        portal_id = request.path_params["id"]
        if not _ID.fullmatch(portal_id):
            return refused("missing")
        browser = request.cookies.get(BROWSER_COOKIE, "")
        if not _COOKIE_VALUE.fullmatch(browser) or not service.secret.verify(
                request.headers.get(CSRF_HEADER, ""), "csrf", browser, portal_id):
            return refused("csrf")
        token, moment = token_of(request, portal_id), now()
        if not token and not limiter.allow(
                _client_key(request.client.host if request.client else "")):
            return refused("rate-limited")
        if token:
            await _in_thread(lambda: service.end_session(portal_id, token, now=moment))
        resp = JSONResponse({"ok": True})
        resp.delete_cookie(session_cookie(portal_id), path="/", secure=True, httponly=True,
                           samesite="strict")
        return resp

    async def sealed(request: Request) -> Response:
        portal_id = request.path_params["id"]
        if not _ID.fullmatch(portal_id):
            return denied("missing")
        token, moment = token_of(request, portal_id), now()
        try:
            row, blob = await _in_thread(lambda: service.ciphertext(portal_id, token,
                                                                    now=moment))
        except PortalDenied as exc:
            return denied(exc.reason)
        # The browser needs these to rebuild the associated data (see crypto/seal.py).
        # sealed_at: shown when the message itself has no Date.
        return JSONResponse({"ciphertext": base64.b64encode(blob).decode("ascii"),
                             "message_id": row.message_id, "recipient": row.recipient,
                             "sealed_at": row.created.isoformat()})

    async def downloaded(request: Request) -> Response:
        checked = await guard(request)
        if isinstance(checked, Response):
            return checked
        try:
            raw_index = checked[1].get("index")
            if not isinstance(raw_index, str) or not re.fullmatch(r"[0-9]{1,6}", raw_index):
                raise ValueError("index")
            index = int(raw_index)
            portal_id, token, moment = checked[0], token_of(request, checked[0]), now()
            await _in_thread(lambda: service.record_download(portal_id, token, index=index,
                                                             now=moment))
        except ValueError:
            return denied("bad-request")
        except PortalDenied as exc:
            return denied(exc.reason)
        return JSONResponse({"ok": True})

    async def reply(request: Request) -> Response:
        checked = await guard(request, replying=True)
        if isinstance(checked, Response):
            return checked
        portal_id, fields = checked
        body, subject = fields.get("body", ""), fields.get("subject", "")
        if not isinstance(body, str) or not isinstance(subject, str):
            return denied("bad-request")
        # Counted as the page counts it: a line break is one character (a form
        # sends each as CRLF).
        if len(body.replace("\r\n", "\n")) > MAX_REPLY_TEXT:
            return too_long()
        attachment = None
        upload = fields.get("attachment")
        if isinstance(upload, tuple):
            name, ctype, data = upload
            if len(data) > MAX_ATTACHMENT:
                return denied("too-large")
            attachment = Attachment(name=name, content_type=ctype or "application/octet-stream",
                                    data=data)
        if not body.strip() and attachment is None:
            return denied("bad-request")
        token, moment, loop = token_of(request, portal_id), now(), asyncio.get_running_loop()

        async def send_here(raw: bytes, mail_from: str, to: str) -> None:
            # The service runs on a loop of its own in a worker thread; the reply
            # goes through the relay's pipeline on the serving loop, as before.
            assert reply_sender is not None  # guard() refused the reply otherwise

            async def send() -> None:
                await reply_sender(raw, mail_from, to)

            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(send(), loop))

        try:
            await _coroutine_in_thread(lambda: service.reply(
                portal_id, token, subject=subject, body=body, attachment=attachment,
                now=moment, reply_sender=send_here))
        except PortalDenied as exc:
            return denied(exc.reason)
        return JSONResponse({"ok": True})

    routes = [
        Route("/", index),
        Route("/m/{id}", landing),
        Route("/m/{id}/code", send_code, methods=["POST"]),
        Route("/m/{id}/verify", verify, methods=["POST"]),
        Route("/m/{id}/session", keep_alive, methods=["POST"]),
        Route("/m/{id}/signout", sign_out, methods=["POST"]),
        Route("/m/{id}/sealed", sealed),
        Route("/m/{id}/downloaded", downloaded, methods=["POST"]),
        Route("/m/{id}/reply", reply, methods=["POST"]),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    https = urlsplit(settings.portal.base_url).scheme == "https"
    # The headers and the error boundary wrap Starlette's own error handling
    # (see _PortalApp): a 500 carries the same headers as any other answer.
    return _PortalApp(https=https, error_page=error_page, routes=routes,
                      exception_handlers={StoreError: store_unavailable,
                                          Exception: server_error})
