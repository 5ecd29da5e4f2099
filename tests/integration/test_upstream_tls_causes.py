"""Why upstream TLS failed, in our own words: OpenSSL's verify message and the
setting to look at, against a real aiosmtpd STARTTLS upstream (trustme certs)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
import trustme

from securemail.config import UpstreamSettings, load_settings
from securemail.errors import ConfigError, UpstreamUnavailable
from securemail.transport.factory import transport_from_settings
from securemail.transport.smtp import SMTPTransport
from tests.integration.relay_support import make_certs, start_upstream, write_config

MSG = b"From: a@riverside.example\r\nTo: b@mail.example\r\nSubject: x\r\n\r\nhello\r\n"


def _server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


async def _failure(ctx: ssl.SSLContext, ca_file: Path) -> str:
    up = await start_upstream(tls=ctx)
    t = SMTPTransport(UpstreamSettings(url=f"smtp://127.0.0.1:{up.port}", ca_file=str(ca_file)))
    try:
        with pytest.raises(UpstreamUnavailable) as exc:
            await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert up.messages == []
    return str(exc.value)


async def test_a_certificate_for_another_name_says_the_address_does_not_match(
        tmp_path: Path) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    text = await _failure(_server_context(ca, "mail.internal.test"), ca_file)
    assert text.startswith("upstream 127.0.0.1:")
    assert "TLS failed (SSLCertVerificationError: CERTIFICATE_VERIFY_FAILED" in text
    assert "IP address mismatch, certificate is not valid for '127.0.0.1'" in text
    assert "check the host in upstream.url" in text


async def test_a_certificate_from_an_unknown_ca_says_the_issuer_is_unknown(
        tmp_path: Path) -> None:
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))  # not the CA that issued it
    text = await _failure(_server_context(trustme.CA(), "127.0.0.1"), other)
    assert "unable to get local issuer certificate" in text
    assert "check upstream.ca_file" in text


async def test_a_verified_upstream_still_gets_the_message(tmp_path: Path) -> None:
    certs = make_certs(tmp_path)
    up = await start_upstream(tls=certs.server_context)
    t = SMTPTransport(UpstreamSettings(url=f"smtp://127.0.0.1:{up.port}",
                                       ca_file=str(certs.ca_file)))
    try:
        result = await t.send("a@riverside.example", ["b@mail.example"], MSG)
    finally:
        await t.close()
        await up.stop()
    assert result.accepted == ("b@mail.example",)


def test_a_missing_ca_file_is_reported_against_the_config_file(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, upstream_url="smtp://127.0.0.1:20587",
                       upstream_tls="required", ca_file="missing-ca.pem")
    with pytest.raises(ConfigError) as exc:
        transport_from_settings(load_settings(cfg))
    assert str(exc.value).startswith(
        f"{cfg}: upstream.ca_file: {tmp_path / 'missing-ca.pem'}: cannot load the CA bundle (")
    assert exc.value.file == str(cfg) and exc.value.key == "upstream.ca_file"
