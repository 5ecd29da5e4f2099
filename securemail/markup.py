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
# A tag ends at the first ">" outside a quoted attribute value (title="a>b").
# Bounded repetitions: "<<<<" or a quote without its end stays linear.
_ATTRS = r"""(?:[^<>"']|"[^"]{0,4096}"|'[^']{0,4096}'){0,4096}"""
_INLINE_TAG = re.compile(r"</?(?:" + _INLINE + r")(?=[\s/>])" + _ATTRS + ">", re.IGNORECASE)
_HTML_TAG = re.compile("<" + _ATTRS + ">")
# Where a script, style or comment starts; each is cut by a linear search for
# its end. Comments end as browsers end them: "<!-->" and "<!--->" are empty,
# "--!>" closes one too.
_HIDDEN_START = re.compile(r"<(script|style)(?=[\s/>])|<!--", re.IGNORECASE)


def html_text(markup: str) -> str:
    """The text of an HTML part, words split and joined as a reader sees them."""
    return html.unescape(_HTML_TAG.sub(" ", _INLINE_TAG.sub("", _without_hidden(markup))))


def _without_hidden(markup: str) -> str:
    out: list[str] = []
    pos = 0
    lowered: str | None = None
    while True:
        found = _HIDDEN_START.search(markup, pos)
        if found is None:
            out.append(markup[pos:])
            return "".join(out)
        out.append(markup[pos:found.start()])
        if found.group(1):  # <script ...> / <style ...>: up to its end tag
            if lowered is None:
                lowered = markup.lower()
            end = lowered.find(f"</{found.group(1).lower()}", found.end())
            if end < 0:  # never closed: a browser hides the rest, a mail program
                out.append(markup[found.start():])  # may not; it is read
                return "".join(out)
            close = markup.find(">", end)
            pos = len(markup) if close < 0 else close + 1
        else:
            after = found.end()
            if markup.startswith(">", after) or markup.startswith("->", after):
                pos = after + (1 if markup.startswith(">", after) else 2)
                continue
            ends = [i for i in (markup.find("-->", after), markup.find("--!>", after)) if i >= 0]
            if not ends:  # an open comment: read the rest rather than guess
                out.append(markup[after:])
                return "".join(out)
            end = min(ends)
            pos = end + (3 if markup.startswith("-->", end) else 4)
