"""Build the configured upstream transport from ``[upstream] url``."""

from __future__ import annotations

from urllib.parse import urlsplit

from securemail.config import Settings
from securemail.errors import ConfigError
from securemail.transport import MemoryTransport, Transport

__all__ = ["transport_from_settings"]


def transport_from_settings(settings: Settings) -> Transport:
    """``smtp://`` -> SMTPTransport; ``maildir://PATH`` -> MaildirTransport
    (``maildir:///abs`` or ``maildir://rel``, relative to the config file);
    ``memory://`` -> MemoryTransport (tests)."""
    url = settings.upstream.url
    scheme = urlsplit(url).scheme
    if scheme == "smtp":
        from dataclasses import replace

        from securemail.transport.smtp import SMTPTransport

        upstream = settings.upstream
        if upstream.ca_file:  # relative to the config file, like every path in it
            upstream = replace(upstream, ca_file=str(settings.resolve(upstream.ca_file)))
        if upstream.password_file:
            upstream = replace(upstream,
                               password_file=str(settings.resolve(upstream.password_file)))
        return SMTPTransport(upstream, local_hostname=settings.relay.hostname)
    if scheme == "maildir":
        from securemail.transport.maildir import MaildirTransport

        rest = url[len("maildir://"):]
        if not rest:
            raise ConfigError(settings.path, "upstream.url", "maildir:// needs a folder")
        return MaildirTransport(settings.resolve(rest))
    if scheme == "memory":
        return MemoryTransport()
    raise ConfigError(settings.path, "upstream.url", f'unsupported scheme in "{url}"')
