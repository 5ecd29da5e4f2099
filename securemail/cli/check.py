"""``securemail check`` and ``securemail send``: run a message file through the policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from securemail.cli.base import (
    EXIT_OK,
    EXIT_PROBLEM,
    config_option,
    handle_errors,
    load_relay,
)
from securemail.errors import Blocked, InputError
from securemail.model import Verdict


def read_message(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected an .eml file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None


def format_table(verdict: Verdict) -> str:
    facts = verdict.facts
    lines = [
        f"Message-ID: {verdict.message_id or '(none)'}",
        f"Mode: {verdict.mode.value}   Encrypted: {'yes' if verdict.encrypted else 'no'}   "
        f"PHI: {'yes' if verdict.phi else 'no'}"
        + (f" ({', '.join(sorted({s.detector for s in facts.phi_signals}))})"
           if facts and facts.phi_signals else "")
        + (f"   Clients: {', '.join(facts.client_ids)}" if facts and facts.client_ids else "")
        + (f"   Named: {', '.join(facts.named_client_ids)}"
           if facts and facts.named_client_ids else ""),
        "",
    ]
    rows = [("RECIPIENT", "SOURCE", "ROLE", "ACTION", "RULES")]
    rows += [(d.address, d.source.value, d.role.value, d.action.value, ",".join(d.rules))
             for d in verdict.decisions]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    lines.append("")
    for d in verdict.decisions:
        lines.append(f"{d.address}: {d.reason}")
    blocked = [d for d in verdict.decisions if d.action.value == "block"]
    lines.append("")
    lines.append(f"Result: BLOCKED for {len(blocked)} of {len(verdict.decisions)} recipient(s)"
                 if blocked else "Result: no recipient blocked")
    return "\n".join(lines)


def _check_addresses(mail_from: str | None, rcpt_tos: tuple[str, ...]) -> None:
    """``--from`` / ``--to`` are bad input (exit 2) when they are not plain addresses."""
    from securemail.directory import AddressError, normalise_address

    given = [("--to", a) for a in rcpt_tos]
    if mail_from:  # "" is the null sender (bounces)
        given.insert(0, ("--from", mail_from))
    for option, value in given:
        try:
            normalise_address(value)
        except AddressError as exc:
            raise InputError(f"{option}: {exc}") from None


@click.command()
@click.argument("file", type=click.Path(dir_okay=True, allow_dash=True))
@click.option("--from", "mail_from", metavar="ADDR", help="Envelope sender (default: From:).")
@click.option("--to", "rcpt_tos", metavar="ADDR", multiple=True,
              help="Envelope recipient; repeat for more (default: To: + Cc: + Bcc:).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@config_option
@handle_errors
def check(file: str, mail_from: str | None, rcpt_tos: tuple[str, ...], as_json: bool,
          config_path: str) -> None:
    """Evaluate the policy for FILE (.eml) without sending. Exit 1 if any recipient is blocked."""
    _check_addresses(mail_from, rcpt_tos)
    raw = read_message(file)
    relay = load_relay(config_path)
    try:
        verdict = relay.check(raw, mail_from=mail_from, rcpt_tos=list(rcpt_tos) or None)
    except InputError as exc:
        if _is_no_recipients(exc):
            raise _no_recipients(file) from None
        raise
    finally:
        relay.close_sync()
    if not verdict.decisions:
        raise _no_recipients(file)
    if as_json:
        click.echo(json.dumps(verdict.to_json(), indent=2, ensure_ascii=False))
    else:
        click.echo(format_table(verdict))
    raise SystemExit(EXIT_PROBLEM if verdict.blocked else EXIT_OK)


@click.command()
@click.argument("file", type=click.Path(dir_okay=True, allow_dash=True))
@click.option("--from", "mail_from", metavar="ADDR", help="Envelope sender (default: From:).")
@click.option("--to", "rcpt_tos", metavar="ADDR", multiple=True,
              help="Envelope recipient; repeat for more (default: To: + Cc: + Bcc:).")
@config_option
@handle_errors
def send(file: str, mail_from: str | None, rcpt_tos: tuple[str, ...], config_path: str) -> None:
    """Push FILE through the same pipeline as the relay. Exit 1 if blocked or deferred."""
    import asyncio

    _check_addresses(mail_from, rcpt_tos)
    raw = read_message(file)
    relay = load_relay(config_path)

    async def run() -> int:
        try:
            outcome = await relay.send(raw, mail_from=mail_from, rcpt_tos=list(rcpt_tos) or None)
        except InputError as exc:
            if _is_no_recipients(exc):
                raise _no_recipients(file) from None
            raise
        except Blocked as exc:
            click.echo(format_table(exc.verdict))
            click.echo(exc.smtp_reply, err=True)
            return EXIT_PROBLEM
        finally:
            await relay.close()
        for r in outcome.recipients:
            extra = f" (portal {r.portal_id})" if r.portal_id else ""
            click.echo(f"{r.address}: {r.action.value} -> {r.status.value}{extra}")
        return EXIT_OK

    raise SystemExit(asyncio.run(run()))


def _is_no_recipients(exc: InputError) -> bool:
    from securemail.relay import NO_RECIPIENTS

    return str(exc) == NO_RECIPIENTS


def _no_recipients(file: str) -> InputError:
    return InputError(f"{file}: no recipients (give --to ADDR or add To:/Cc:/Bcc: headers)")


commands: list[click.Command] = [check, send]
