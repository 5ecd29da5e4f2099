"""[portal] forwarded_allow_ips: validated in config loading (file and key
named), passed to uvicorn, and nothing else (not FORWARDED_ALLOW_IPS) decides
whose X-Forwarded-For is believed."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace
from pathlib import Path

import pytest

from securemail.config import load_settings
from securemail.errors import ConfigError
from securemail.serve import ensure_demo, start_services

BASE = """
[practice]
name = "Riverside Counselling"
domains = ["riverside.example"]

[upstream]
url = "maildir:outbox"
tls = "none"

[storage]
url = "sqlite:data/securemail.db"

[portal]
base_url = "https://secure.riverside.example"
"""


def write(tmp_path: Path, extra: str) -> Path:
    cfg = tmp_path / "securemail.toml"
    cfg.write_text(BASE + extra)
    return cfg


def test_default_is_loopback_only(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")).portal.forwarded_allow_ips == ("127.0.0.1", "::1")


def test_addresses_and_networks_are_read_and_normalised(tmp_path: Path) -> None:
    cfg = write(tmp_path, 'forwarded_allow_ips = ["10.0.0.0/8", "2001:DB8::1", " 192.0.2.7 "]\n')
    assert load_settings(cfg).portal.forwarded_allow_ips == ("10.0.0.0/8", "2001:db8::1",
                                                             "192.0.2.7")


@pytest.mark.parametrize(("value", "key", "problem"), [
    ('["10.0.0.1/8"]', "portal.forwarded_allow_ips[0]", "host bits must be zero"),
    ('["127.0.0.1", "proxy.example"]', "portal.forwarded_allow_ips[1]", "proxy.example"),
    ('["*"]', "portal.forwarded_allow_ips[0]", "not an IP address"),
    ('"127.0.0.1"', "portal.forwarded_allow_ips", "list"),
    ("[1]", "portal.forwarded_allow_ips[0]", "string"),
])
def test_bad_values_name_file_and_key(tmp_path: Path, value: str, key: str,
                                      problem: str) -> None:
    cfg = write(tmp_path, f"forwarded_allow_ips = {value}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    text = str(info.value)
    assert str(cfg) in text and key in text and problem in text


async def test_serve_trusts_proxy_headers_only_from_the_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from securemail.portal.app import CLIENT_POSTS
    from securemail.relay import Relay

    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "*")  # must not widen the setting
    settings = load_settings(ensure_demo(tmp_path))
    settings = replace(settings, portal=replace(settings.portal, listen="127.0.0.1:0",
                                                forwarded_allow_ips=("192.0.2.1",)))
    relay = Relay(settings)
    services = await start_services(relay, settings, smtp=False)
    try:
        server = services.portal_server
        assert server is not None
        assert server.config.forwarded_allow_ips == ["192.0.2.1"]
        port = server.servers[0].sockets[0].getsockname()[1]

        async def post(forwarded_for: str) -> int:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"POST /m/{'A' * 24}/code HTTP/1.1\r\nHost: x\r\n"
                         f"X-Forwarded-For: {forwarded_for}\r\nContent-Length: 0\r\n"
                         "Connection: close\r\n\r\n".encode())
            await writer.drain()
            status = await reader.readline()
            writer.close()
            match = re.match(rb"HTTP/1\.1 (\d+)", status)
            assert match
            return int(match.group(1))

        # Each POST claims another client; loopback is not the trusted proxy, so
        # they all count as 127.0.0.1 and the per-client limit applies.
        statuses = [await post(f"198.51.100.{i}") for i in range(CLIENT_POSTS + 1)]
        assert 429 not in statuses[:CLIENT_POSTS]
        assert statuses[-1] == 429
    finally:
        await services.stop(drain_seconds=1)
        await relay.close()
