"""DKIM signing (RFC 6376) of every message the relay emits.

dkimpy does the parsing, relaxed canonicalisation and header hashing, so the
bytes we sign are exactly the bytes dkimpy (and every other verifier) hashes.
The private-key operation itself goes through ``cryptography``: dkimpy's RSA
is pure Python (~130 signatures/s for RSA-2048) while OpenSSL does thousands.

Choices (see docs/dkim.md):

- ``c=relaxed/relaxed``; no ``l=`` tag (a body-length limit lets anyone append
  content under our signature); no ``x=`` tag.
- Signed: the identity, routing and MIME headers listed in ``SIGNED_HEADERS``,
  each as many times as it occurs. ``OVERSIGNED_HEADERS`` are listed once more
  (also when absent), so nobody can add a From / Reply-To / Sender / Subject.
- The signature header is prepended; the rest of the message is byte for byte
  what was given (bare-LF input is first turned into CRLF, the wire form).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from dkim.canonicalization import CanonicalizationPolicy

from securemail.directory import AddressError
from securemail.errors import ConfigError, RenderError
from securemail.parse import parse_address_list, utf8_header

if TYPE_CHECKING:
    from securemail.config import Settings

__all__ = [
    "MIN_RSA_BITS",
    "OVERSIGNED_HEADERS",
    "SIGNED_HEADERS",
    "DkimSigner",
    "PrivateKey",
    "dns_record_name",
    "generate_key",
    "public_record",
    "relaxed_body",
    "split_message",
    "txt_strings",
]

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

MIN_RSA_BITS: Final = 2048

# RFC 6376 section 5.4.1's recommended list, minus Resent-* (we never emit
# them), plus Content-Disposition and List-Unsubscribe-Post (RFC 8058).
SIGNED_HEADERS: Final = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id",
    b"to", b"cc", b"in-reply-to", b"references",
    b"mime-version", b"content-type", b"content-transfer-encoding",
    b"content-id", b"content-description", b"content-disposition",
    b"list-id", b"list-help", b"list-unsubscribe", b"list-unsubscribe-post",
    b"list-subscribe", b"list-post", b"list-owner", b"list-archive",
)

# Signed one time more than they occur: adding one breaks the signature.
# Date and Message-ID are deliberately not here: an upstream MTA (Postfix for
# local clients) may add a missing one, and that must not break the signature.
OVERSIGNED_HEADERS: Final = (b"from", b"reply-to", b"sender", b"subject")

_RELAXED: Final = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_LINE_LIMIT: Final = 76  # folded signature lines stay under RFC 5322's 78
_FIELD_NAME: Final = b"DKIM-Signature"


class DkimSigner:
    """Signs messages for one ``d=`` domain and ``s=`` selector."""

    __slots__ = ("_algorithm", "_domain", "_key", "_selector")

    def __init__(self, *, domain: str, selector: str, private_key: PrivateKey) -> None:
        self._domain = domain.encode("ascii")
        self._selector = selector.encode("ascii")
        self._key = private_key
        if isinstance(private_key, ed25519.Ed25519PrivateKey):
            self._algorithm = b"ed25519-sha256"
        elif isinstance(private_key, rsa.RSAPrivateKey):
            if private_key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA key has {private_key.key_size} bits, "
                                 f"DKIM keys need at least {MIN_RSA_BITS}")
            self._algorithm = b"rsa-sha256"
        else:
            raise TypeError("DKIM keys are RSA or Ed25519")

    def __repr__(self) -> str:  # never show key material
        return (f"DkimSigner(domain={self.domain!r}, selector={self.selector!r}, "
                f"algorithm={self.algorithm!r})")

    @property
    def domain(self) -> str:
        return self._domain.decode("ascii")

    @property
    def selector(self) -> str:
        return self._selector.decode("ascii")

    @property
    def algorithm(self) -> str:
        """``rsa-sha256`` or ``ed25519-sha256`` (the ``a=`` tag)."""
        return self._algorithm.decode("ascii")

    def dns_record(self) -> str:
        """The TXT record value that publishes this signer's public key."""
        return public_record(self._key)

    @classmethod
    def from_pem(cls, pem: bytes, *, domain: str, selector: str) -> DkimSigner:
        """A signer from an unencrypted PEM private key; ``ValueError`` says why not."""
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except TypeError:
            raise ValueError("the key is password-protected; securemail needs an "
                             "unencrypted key file readable only by its user") from None
        except (ValueError, UnsupportedAlgorithm):
            # cryptography's text is not shown: it may quote parts of the file.
            raise ValueError("not a PEM private key (expected the file written by "
                             "`securemail dkim keygen`)") from None
        if not isinstance(key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise ValueError("must be an RSA (2048 bits or more) or Ed25519 private key")
        return cls(domain=domain, selector=selector, private_key=key)

    @classmethod
    def from_settings(cls, settings: Settings) -> DkimSigner | None:
        """The signer for ``[dkim]``, or None when that section is absent."""
        conf = settings.dkim
        if conf is None:
            return None

        def problem(text: str) -> ConfigError:
            return ConfigError(settings.path, "dkim.key_file", text)

        if not conf.key_file:
            raise problem("is empty (run `securemail dkim keygen` to create a key)")
        path = settings.resolve(conf.key_file)
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            raise problem(f"{path}: file not found (run `securemail dkim keygen` "
                          "to create one)") from None
        except OSError as exc:
            raise problem(f"{path}: cannot read ({exc.strerror})") from None
        try:
            return cls.from_pem(pem, domain=conf.domain, selector=conf.selector)
        except ValueError as exc:
            raise problem(f"{path}: {exc}") from None

    def sign(self, message: bytes, *, now: dt.datetime | None = None) -> bytes:
        """``message`` with a DKIM-Signature header prepended, if it is ours.

        Only a message whose every From address is in our domain (``domain`` or
        a subdomain of it, which DMARC's relaxed alignment accepts) is signed;
        any other is returned unsigned (in CRLF form): a signature vouches for
        the From, and a filter that also sees a forged or foreign From must not
        lend it ours (OpenDKIM's default, too).

        Raises :class:`RenderError` (generic text, no content) when a message
        of ours cannot be signed; the caller then defers rather than send it
        unsigned.
        """
        wire = _crlf(message)
        end = wire.find(b"\r\n\r\n")
        if _FROM_WITHOUT_COLON.search(wire, 0, end if end >= 0 else len(wire)):
            # An mbox "From " / obsolete "From :" header line: dkimpy skips it,
            # mail programs may show it. Never sign what two readers see apart.
            raise RenderError("DKIM signing failed: a header line starts with From but no"
                              " colon")
        headers, body = _split(wire)
        if not any(name.lower() == b"from" for name, _ in headers):
            raise RenderError("DKIM signing failed: the message has no From header")
        if not self.signs_for(headers):
            return wire
        pending = self._prepare(wire, headers, body, now)
        return pending.finish(self._signature(pending.signed_data))

    def signs_for(self, headers: list[list[bytes]]) -> bool:
        """Whether every address in every From header is in our domain."""
        ours = self._domain.decode("ascii").lower()
        found = False
        for name, value in headers:
            if name.lower() != b"from":
                continue
            try:
                addresses = parse_address_list(utf8_header(value.decode(
                    "ascii", "surrogateescape")).strip())
            except AddressError:
                return False
            for address in addresses:
                domain = address.rpartition("@")[2]
                if domain != ours and not domain.endswith("." + ours):
                    return False
                found = True
        return found

    def _prepare(self, wire: bytes, headers: list[list[bytes]], body: bytes,
                 now: dt.datetime | None) -> _Pending:
        include = _header_list(headers)
        try:
            value, signed_data = self._signature_value(headers, body, include, now)
        except Exception:  # noqa: BLE001 - any library fault must fail closed, quietly
            raise RenderError("DKIM signing failed") from None
        return _Pending(wire, value, signed_data)

    def _signature_value(self, headers: list[list[bytes]], body: bytes,
                         include: Sequence[bytes], now: dt.datetime | None
                         ) -> tuple[bytes, bytes]:
        """The DKIM-Signature value up to ``b=``, and the header data it signs."""
        body_hash = hashlib.sha256(relaxed_body(body)).digest()
        when = int((now or dt.datetime.now(dt.UTC)).timestamp())
        tags = [
            b"v=1", b"a=" + self._algorithm, b"c=relaxed/relaxed",
            b"d=" + self._domain, b"s=" + self._selector, b"t=%d" % when,
            b"h=" + b":".join(include), b"bh=" + base64.b64encode(body_hash),
        ]
        # The b= tag gets a line of its own, so adding its value cannot change
        # the folding of anything that was hashed before it.
        value = _fold_tags(tags) + b";\r\n b="
        signed_data = _HeaderData()
        dkim.hash_headers(signed_data, _RELAXED, _RELAXED.canonicalize_headers(headers),
                          list(include), (_FIELD_NAME, value), {})
        return value, signed_data.value()

    def _signature(self, data: bytes) -> bytes:
        try:
            return self._sign_bytes(data)
        except Exception:  # noqa: BLE001 - any library fault must fail closed, quietly
            raise RenderError("DKIM signing failed") from None

    def _sign_bytes(self, data: bytes) -> bytes:
        if isinstance(self._key, ed25519.Ed25519PrivateKey):
            # RFC 8463: Ed25519 signs the SHA-256 digest of the header data.
            return self._key.sign(hashlib.sha256(data).digest())
        # RSASSA-PKCS1-v1_5 with SHA-256 over the same data, as dkimpy computes it.
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class _Pending:
    """A message whose signature header lacks only the ``b=`` value."""

    __slots__ = ("signed_data", "value", "wire")

    def __init__(self, wire: bytes, value: bytes, signed_data: bytes) -> None:
        self.wire = wire
        self.value = value
        self.signed_data = signed_data

    def finish(self, signature: bytes) -> bytes:
        return (_FIELD_NAME + b":" + self.value + _fold_b64(base64.b64encode(signature))
                + b"\r\n" + self.wire)


class _HeaderData:
    """Stands in for dkimpy's hasher: collects the bytes it would hash."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def update(self, data: bytes) -> None:
        self._parts.append(data)

    def value(self) -> bytes:
        return b"".join(self._parts)


_FROM_WITHOUT_COLON = re.compile(rb"(?im)^from[ \t]")


def _split(wire: bytes) -> tuple[list[list[bytes]], bytes]:
    try:
        return split_message(wire)
    except (dkim.MessageFormatError, IndexError):  # IndexError: starts with a folded line
        raise RenderError("DKIM signing failed: the header block cannot be parsed") from None


def split_message(wire: bytes) -> tuple[list[list[bytes]], bytes]:
    """dkimpy's ``rfc822_parse`` of a CRLF message, without splitting the body.

    dkimpy splits the whole message into lines and joins the body again; for
    CRLF input that join gives back the bytes after the blank line, so only
    the header block is handed to dkimpy.
    """
    if wire.startswith(b"\r\n"):
        return [], wire[2:]
    if wire[:1] in (b" ", b"\t"):
        # A continuation line with no header to continue (dkimpy would IndexError).
        raise dkim.MessageFormatError("message starts with a folded line")
    end = wire.find(b"\r\n\r\n")
    if end < 0:
        return dkim.rfc822_parse(wire)  # type: ignore[no-any-return]
    headers, _ = dkim.rfc822_parse(wire[:end + 2])
    return headers, wire[end + 4:]


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalisation (RFC 6376 3.4.4), with bytes methods.

    dkimpy's two regular expressions cost ~0.4 ms on 10 KiB, more than the
    RSA signature; these replaces give the same bytes (a property test checks
    that against dkimpy) several times faster.
    """
    body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n")
    canonical: bytes = dkim.canonicalization.correct_empty_body(
        dkim.canonicalization.strip_trailing_lines(body))
    return canonical


def _crlf(message: bytes) -> bytes:
    if message.count(b"\n") == message.count(b"\r\n"):  # every LF has its CR: no copy
        return message
    return message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _header_list(headers: list[list[bytes]]) -> list[bytes]:
    names = [name.lower() for name, _ in headers]
    include = [n for n in names if n in SIGNED_HEADERS]
    # Listed even when absent: then none can be added (a Reply-To slipped in
    # downstream would redirect a client's answer).
    return include + list(OVERSIGNED_HEADERS)


def _fold_tags(tags: list[bytes]) -> bytes:
    """``tag; tag; ...`` folded at tag boundaries and between ``h=`` names."""
    atoms: list[bytes] = []
    for i, tag in enumerate(tags):
        last = i == len(tags) - 1
        if tag.startswith(b"h="):
            names = tag.split(b":")
            atoms += [n + b":" for n in names[:-1]] + [names[-1] + (b"" if last else b";")]
        else:
            atoms.append(tag + (b"" if last else b";"))
    lines: list[bytes] = []
    line = b""
    for atom in atoms:
        glue = b"" if line.endswith(b":") else b" "
        # The first line also holds the field name "DKIM-Signature:".
        width = len(line) + len(glue) + len(atom) + (0 if lines else len(_FIELD_NAME) + 1)
        if line and width > _LINE_LIMIT:
            lines.append(line)
            line = b" " + atom  # continuation lines start with white space
        else:
            line += glue + atom
    lines.append(line)
    return b"\r\n".join(lines)


def _fold_b64(data: bytes) -> bytes:
    first = _LINE_LIMIT - len(b" b=")
    chunks = [data[:first]] + [data[i:i + _LINE_LIMIT - 1]
                               for i in range(first, len(data), _LINE_LIMIT - 1)]
    return b"\r\n ".join(c for c in chunks if c)


# ---------------------------------------------------------------- keys & DNS


def generate_key(kind: str = "rsa") -> tuple[bytes, str]:
    """A new key: (unencrypted PKCS#8 PEM private key, DNS TXT record value)."""
    key: PrivateKey
    if kind == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)
    elif kind == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(f'key type must be "rsa" or "ed25519", got "{kind}"')
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return pem, public_record(key)


def public_record(key: PrivateKey) -> str:
    """``v=DKIM1; k=...; p=...`` for the public half of ``key``."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # RFC 8463: p= is the raw 32-byte public key, not a SubjectPublicKeyInfo.
        raw = key.public_key().public_bytes(serialization.Encoding.Raw,
                                            serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"


def dns_record_name(selector: str, domain: str) -> str:
    """Where the TXT record goes: ``selector._domainkey.domain`` (no final dot)."""
    return f"{selector}._domainkey.{domain.rstrip('.')}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """``value`` cut into the <= 255-byte character-strings one TXT record holds."""
    if not re.fullmatch(r"[\x20-\x7e]*", value):
        raise ValueError("a DKIM TXT value is printable ASCII")
    return [value[i:i + size] for i in range(0, len(value), size)] or [""]
