"""A linear tokenizer for the XML and HTML inside attachments.

Spreadsheet parts, Word and OpenDocument tables and HTML are read tag by tag
here rather than with an XML parser: nothing is resolved (no DTDs, no
entities beyond the character references of :func:`html.unescape`), nothing
fails on malformed markup, and every pattern is possessive, so no input makes
the reading slower than linear. Callers bound the number of tokens they read.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

__all__ = ["tokens"]

# A tag: "/" if it closes, its name without a namespace prefix, its
# attributes (a trailing "/" closes it at once); or a run of text; or a CDATA
# section (text); or an XML declaration, processing instruction or comment
# start (skipped); or a "<" that starts no tag. Every quantifier is
# possessive: nothing is tried twice.
_TOKEN = re.compile(
    r"<(/?)(?:[\w.-]{1,64}+:)?+([\w.-]{1,64}+)([^<>]{0,4096}+)>|([^<]++)"
    r"|<!\[CDATA\[((?:[^\]]++|\](?!\]>))*+)(?:\]\]>)?+|<[?!][^<>]{0,4096}+>|<")


def tokens(markup: str) -> Iterator[tuple[str, bool, str, str]]:
    """``(name, closing, attributes, text)`` for each tag (``name`` as
    written, without its prefix; ``attributes`` ends with "/" when the tag
    closes itself) and each run of text (``name`` is "", ``text`` decoded)."""
    for m in _TOKEN.finditer(markup):
        text = m.group(4)
        if text is not None:
            yield "", False, "", html.unescape(text) if "&" in text else text
        elif m.group(2) is not None:
            yield m.group(2), m.group(1) == "/", m.group(3), ""
        elif m.group(5) is not None:  # CDATA: text as it is
            yield "", False, "", m.group(5)
