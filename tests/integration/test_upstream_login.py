"""Logging in to a smarthost that wants SMTP AUTH (Microsoft 365 client
submission, Google's relay with authentication, a provider's port 587): over
verified STARTTLS, with the password read from a file, never logged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from securemail.errors import ConfigError
from tests.integration.relay_support import (
    CaptureHandler,
    Upstream,
    make_certs,
    message,
    run_relay,
    write_config,
)

USER, PASSWORD = "relay@riverside.example", "correct horse battery staple"


class Authenticator:
    def __init__(self) -> None:
        self.attempts: list[tuple[str, bool]] = []

    def __call__(self, server: SMTP, session: Any, envelope: Any, mechanism: str,
                 auth_data: Any) -> AuthResult:
        ok = (isinstance(auth_data, LoginPassword)
              and auth_data.login.decode() == USER and auth_data.password.decode() == PASSWORD)
        self.attempts.append((mechanism, ok))
        return AuthResult(success=ok, handled=False)  # False: aiosmtpd sends the 535


@pytest.fixture
async def smarthost(tmp_path: Path) -> AsyncIterator[tuple[Upstream, Authenticator, Path]]:
    certs = make_certs(tmp_path)
    auth = Authenticator()
    handler = CaptureHandler()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, tls_context=certs.server_context, require_starttls=True,
                     authenticator=auth, auth_required=True, auth_require_tls=True,
                     hostname="smarthost.test", loop=loop),
        host="127.0.0.1", port=0)
    up = Upstream(handler, server, server.sockets[0].getsockname()[1])
    yield up, auth, certs.ca_file
    await up.stop()


def _config(tmp_path: Path, up: Upstream, ca: Path, password: str = PASSWORD) -> Path:
    (tmp_path / "upstream.password").write_text(password + "\n")
    cfg = write_config(tmp_path, upstream_url=f"smtp://127.0.0.1:{up.port}",
                       upstream_tls="required", ca_file=str(ca))
    return _with_login(cfg, USER)


def _with_login(cfg: Path, username: str) -> Path:
    text = cfg.read_text().replace(
        "[upstream]\n",
        f'[upstream]\nusername = "{username}"\npassword_file = "upstream.password"\n', 1)
    cfg.write_text(text)
    return cfg


async def send(port: int) -> tuple[int, str]:
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, timeout=15)
    await client.connect()
    try:
        await client.mail("dr@riverside.example")
        await client.rcpt("colleague@riverside.example")
        try:
            resp = await client.data(message())
            return resp.code, resp.message
        except aiosmtplib.SMTPDataError as exc:
            return exc.code, exc.message
    finally:
        client.close()


async def test_the_relay_logs_in_over_tls_and_delivers(
        tmp_path: Path, smarthost: tuple[Upstream, Authenticator, Path]) -> None:
    up, auth, ca = smarthost
    relay = await run_relay(_config(tmp_path, up, ca))
    try:
        code, _ = await send(relay.port)
    finally:
        await relay.stop()
    assert code == 250
    assert len(up.messages) == 1
    assert auth.attempts and all(ok for _, ok in auth.attempts)


async def test_a_wrong_password_defers_and_says_which_setting(
        tmp_path: Path, smarthost: tuple[Upstream, Authenticator, Path],
        caplog: pytest.LogCaptureFixture) -> None:
    up, auth, ca = smarthost
    relay = await run_relay(_config(tmp_path, up, ca, password="wrong password"))
    try:
        with caplog.at_level(logging.WARNING):
            code, _ = await send(relay.port)
    finally:
        await relay.stop()
    assert code == 451  # the sender keeps the message; fixing the file lets the retry through
    assert up.messages == []
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"refused the login of {USER}" in logged and "upstream.password_file" in logged
    assert "wrong password" not in logged and PASSWORD not in logged


def test_a_missing_password_file_is_a_config_error(tmp_path: Path) -> None:
    from securemail.relay import load

    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:2", upstream_tls="required")
    _with_login(cfg, USER)
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert err.value.key == "upstream.password_file" and "file not found" in str(err.value)


def test_a_user_name_without_a_password_file_is_refused(tmp_path: Path) -> None:
    from securemail.config import load_settings

    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:2", upstream_tls="required")
    cfg.write_text(cfg.read_text().replace("[upstream]\n", '[upstream]\nusername = "x"\n', 1))
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert err.value.key == "upstream.password_file"
