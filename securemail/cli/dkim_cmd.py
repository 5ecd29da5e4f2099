"""``securemail dkim``: make a DKIM key and say what to publish in DNS."""

from __future__ import annotations

import os
from pathlib import Path

import click

from securemail.cli.base import config_option, handle_errors
from securemail.config import DKIM_SELECTOR
from securemail.dkim import dns_record_name, generate_key, txt_strings
from securemail.errors import ConfigError, InputError


@click.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys."""


@dkim_group.command("keygen")
@config_option
@click.option("--domain", default=None,
              help="The d= domain: your practice's mail domain [default: [dkim] domain, else"
                   " the first of practice.domains, from the config].")
@click.option("--selector", required=True,
              help="The s= selector, e.g. sm2026 (use a new one for each new key).")
@click.option("--type", "kind", type=click.Choice(["rsa", "ed25519"]), default="rsa",
              show_default=True,
              help="rsa = RSA-2048 (every receiver checks it); ed25519 = RFC 8463 "
                   "(publish it beside an RSA key: not every receiver checks it).")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False),
              default=None, help="Key file to write [default: dkim-SELECTOR.key beside the"
                                 " config file when there is one, else here].")
@handle_errors
def keygen(config_path: str, domain: str | None, selector: str, kind: str,
           output: str | None) -> None:
    """Write a new private key (mode 0600) and print the DNS TXT record."""
    from securemail.directory import AddressError, normalise_domain

    config = Path(config_path)
    if domain is None:
        domain = _config_domain(config)
    try:
        domain = normalise_domain(domain)
    except AddressError as exc:
        raise InputError(f"--domain: {exc}") from None
    if not DKIM_SELECTOR.fullmatch(selector):
        raise InputError(f'--selector: not a valid DKIM selector: "{selector}" '
                         "(letters, digits, '.', '-', '_')")
    path = Path(output) if output else (
        config.parent if config.is_file() else Path()) / f"dkim-{selector}.key"
    pem, record = generate_key(kind)
    _write_private(path, pem)
    click.echo(f"Wrote the {'RSA-2048' if kind == 'rsa' else 'Ed25519'} private key to "
               f"{path} (mode 0600). Keep it secret: never e-mail it or commit it.")
    click.echo("")
    _echo_record(dns_record_name(selector, domain), record)
    click.echo("")
    click.echo("Then, once the record is visible in DNS, add to securemail.toml:")
    click.echo("  [dkim]")
    click.echo(f'  domain = "{domain}"')
    click.echo(f'  selector = "{selector}"')
    click.echo(f'  key_file = "{path.resolve()}"')


def _config_domain(config: Path) -> str:
    """The domain a new key is for when --domain is not given: the config's."""
    if not config.is_file():
        raise InputError(f"--domain: required (no config at {config} to take it from)")
    from securemail.config import load_settings

    settings = load_settings(str(config))
    if settings.dkim is not None:
        return settings.dkim.domain
    if settings.practice.domains:
        return settings.practice.domains[0]
    raise ConfigError(settings.path, "practice.domains", "empty: give the key's domain with"
                      " --domain")


@dkim_group.command("record")
@config_option
@handle_errors
def record(config_path: str) -> None:
    """Print the DNS TXT record for the key configured in [dkim]."""
    from securemail.config import load_settings
    from securemail.dkim import DkimSigner

    settings = load_settings(config_path)
    signer = DkimSigner.from_settings(settings)
    if signer is None:
        raise ConfigError(settings.path, "dkim", "no [dkim] section: DKIM signing is off")
    click.echo(f"{signer.algorithm} key for d={signer.domain} s={signer.selector}")
    _echo_record(dns_record_name(signer.selector, signer.domain), signer.dns_record())


def _echo_record(name: str, value: str) -> None:
    strings = " ".join(f'"{s}"' for s in txt_strings(value))
    click.echo("Publish this DNS TXT record:")
    click.echo(f"  name:  {name}")
    click.echo(f"  value: {value}")
    click.echo("")
    click.echo("As a BIND zone file line (values over 255 characters are split):")
    click.echo(f"  {name}. 3600 IN TXT ( {strings} )")


def _write_private(path: Path, pem: bytes) -> None:
    """Create ``path`` readable by its owner only; never replace an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path}: already exists; refusing to overwrite a key "
                         "(choose another -o, or remove the old key yourself)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot create ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # the umask only narrows the mode; be exact
            out.write(pem)
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None


commands: list[click.Command] = [dkim_group]
