"""The content of an S/MIME part that is signed or compressed, not encrypted.

An "opaque-signed" S/MIME message (``application/pkcs7-mime;
smime-type=signed-data``) carries its whole MIME body inside a CMS SignedData
structure: anyone can read it, but a MIME parser sees only base64. The same
goes for CompressedData (RFC 3274; zlib). To the PHI detectors these are
clear text, so :func:`cms_content` unwraps them.

BER, not only DER: streaming encoders (``openssl smime -stream``, Outlook)
use indefinite lengths and chunked OCTET STRINGs.
"""

from __future__ import annotations

import zlib
from typing import Final

from securemail.documents import Unreadable

__all__ = ["cms_content"]

_SIGNED_DATA: Final = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_COMPRESSED_DATA: Final = bytes.fromhex("2a864886f70d0109100109")  # 1.2.840.113549.1.9.16.1.9
_ENVELOPED: Final = (bytes.fromhex("2a864886f70d010703"),  # envelopedData
                     bytes.fromhex("2a864886f70d0109100117"))  # authEnvelopedData
_MAX_DEPTH: Final = 64
_MAX_INFLATED: Final = 16 * 1024 * 1024  # then parsed as MIME: keep it well bounded


class _Node:
    __slots__ = ("constructed", "end", "start", "tag")

    def __init__(self, tag: int, constructed: bool, start: int, end: int) -> None:
        self.tag, self.constructed, self.start, self.end = tag, constructed, start, end


def cms_content(der: bytes) -> bytes | None:
    """The MIME entity inside a CMS SignedData or CompressedData ``der``;
    None for EnvelopedData (real ciphertext) or a signature without content
    (a detached or certs-only one). Raises :class:`Unreadable` when the
    structure cannot be read."""
    try:
        return _content(der)
    except (IndexError, ValueError, zlib.error, RecursionError):
        raise Unreadable("the S/MIME structure cannot be read") from None


def _content(der: bytes) -> bytes | None:
    info = _node(der, 0, 0)
    if info.tag != 0x30:
        raise ValueError("ContentInfo is not a SEQUENCE")
    kind, rest = _children(der, info, 2)
    oid = _primitive(der, kind, 0x06)
    if oid in _ENVELOPED:
        return None
    if oid not in (_SIGNED_DATA, _COMPRESSED_DATA):
        raise ValueError("not signed or compressed data")
    if rest.tag != 0xA0:
        raise ValueError("no [0] content")
    body = _children(der, rest, 1)[0]  # SignedData / CompressedData SEQUENCE
    fields = _all_children(der, body)
    # SignedData: version, digestAlgorithms, encapContentInfo, ...
    # CompressedData: version, compressionAlgorithm, encapContentInfo
    encap = fields[2]
    parts = _all_children(der, encap)
    if len(parts) < 2:
        return None  # detached signature: the content travels beside it
    if parts[1].tag != 0xA0:
        raise ValueError("eContent is not [0]")
    content = _octets(der, _children(der, parts[1], 1)[0], 0)
    if oid == _COMPRESSED_DATA:
        inflater = zlib.decompressobj()
        content = inflater.decompress(content, _MAX_INFLATED)
        if inflater.unconsumed_tail:
            raise ValueError("compressed content inflates past the limit")
    return content


def _node(data: bytes, i: int, depth: int) -> _Node:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    tag = data[i]
    if tag & 0x1F == 0x1F:
        raise ValueError("high tag numbers are not used in CMS")
    length_byte = data[i + 1]
    start = i + 2
    if length_byte == 0x80:  # indefinite: children up to an end-of-contents 00 00
        if not tag & 0x20:
            raise ValueError("indefinite length on a primitive")
        j = start
        while data[j:j + 2] != b"\x00\x00":
            if j >= len(data):
                raise ValueError("no end of contents")
            j = _node(data, j, depth + 1).end
        return _Node(tag, True, start, j + 2)
    if length_byte & 0x80:
        size = length_byte & 0x7F
        if size == 0 or size > 4:
            raise ValueError("bad length")
        length = int.from_bytes(data[start:start + size], "big")
        start += size
    else:
        length = length_byte
    end = start + length
    if end > len(data):
        raise ValueError("length past the end")
    return _Node(tag, bool(tag & 0x20), start, end)


def _all_children(data: bytes, parent: _Node) -> list[_Node]:
    if not parent.constructed:
        raise ValueError("not constructed")
    out: list[_Node] = []
    i = parent.start
    limit = parent.end
    while i < limit:
        if data[i:i + 2] == b"\x00\x00":  # end of an indefinite-length parent
            break
        child = _node(data, i, 1)
        out.append(child)
        i = child.end
    return out


def _children(data: bytes, parent: _Node, count: int) -> list[_Node]:
    found = _all_children(data, parent)
    if len(found) < count:
        raise ValueError("missing fields")
    return found


def _primitive(data: bytes, node: _Node, tag: int) -> bytes:
    if node.tag != tag:
        raise ValueError("unexpected tag")
    return data[node.start:node.end]


def _octets(data: bytes, node: _Node, depth: int) -> bytes:
    """An OCTET STRING's bytes, primitive (04) or constructed from chunks (24)."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    if node.tag == 0x04:
        return data[node.start:node.end]
    if node.tag == 0x24:
        return b"".join(_octets(data, c, depth + 1) for c in _all_children(data, node))
    raise ValueError("eContent is not an OCTET STRING")
