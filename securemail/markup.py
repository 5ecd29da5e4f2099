"""The text of HTML as a mail program shows it (for the PHI detectors)."""

from __future__ import annotations

import html
import re

__all__ = ["html_text"]

# HTML as a mail program shows it: the tags of inline elements (a word half in
# bold, a spell-check <span class=SpellE>, a coloured letter) join the letters
# around them; every other tag (paragraph, line break, cell, image, ...) ends
# a word. Comments show nothing; scripts and styles are not text.
_INLINE = ("a|abbr|b|bdi|bdo|big|cite|code|data|del|dfn|em|font|i|ins|kbd|label|mark|"
           "nobr|o:p|q|rp|rt|ruby|s|samp|small|span|strike|strong|sub|sup|time|tt|u|var|wbr")
_HTML_NOTHING = re.compile(
    r"<(script|style)\b.*?</\1\s*>|<!--.*?-->|</?(?:" + _INLINE + r")(?=[\s/>])[^>]*>",
    re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]*>")


def html_text(markup: str) -> str:
    """The text of an HTML part, words split and joined as a reader sees them."""
    return html.unescape(_HTML_TAG.sub(" ", _HTML_NOTHING.sub("", markup)))
