"""The text of HTML as a mail program shows it (for the PHI detectors)."""

from __future__ import annotations

import html
import re
from urllib.parse import unquote_plus

__all__ = ["html_text"]

# HTML as a mail program shows it: the tags of inline elements (a word half in
# bold, a spell-check <span class=SpellE>, a coloured letter) join the letters
# around them; every other tag (paragraph, line break, cell, image, ...) ends
# a word. Comments show nothing (their text is read apart); scripts and
# styles are not text.
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


# Text that travels in the part without being its flowing text: what a mail
# program shows in place of a blocked image (alt), in a tooltip (title), to a
# screen reader (aria-label), in an empty field (placeholder), and where a
# link leads (href: a mailto: address, a form's query string).
_TEXT_ATTR = re.compile(
    r"""[\s"'](alt|title|aria-label|placeholder|href)\s*=\s*"""
    r"""(?:"([^"]{0,4096})"|'([^']{0,4096})'|([^\s"'<>]{1,4096}))""", re.IGNORECASE)


def html_text(markup: str) -> str:
    """The text of an HTML part, words split and joined as a reader sees them;
    then, one per line, the text of its attributes that people read (alt,
    title, aria-label, placeholder, decoded link targets) and its comments:
    they leave with the part too."""
    comments: list[str] = []
    visible = _without_hidden(markup, comments)
    text = html.unescape(_HTML_TAG.sub(" ", _INLINE_TAG.sub("", visible)))
    # Attributes are looked for inside tags only ("<" is quick to find; a
    # pattern tried at every word of the text is not).
    extra = [_attribute_text(m) for tag in _HTML_TAG.finditer(visible) if "=" in tag.group()
             for m in _TEXT_ATTR.finditer(tag.group())]
    extra += [html.unescape(_HTML_TAG.sub(" ", c)) for c in comments]
    extra = [e for e in extra if e.strip()]
    return "\n".join([text, *extra]) if extra else text


def _attribute_text(found: re.Match[str]) -> str:
    value = html.unescape(found.group(2) or found.group(3) or found.group(4) or "")
    if found.group(1).lower() != "href":
        return value
    if value[:7].lower() == "mailto:":
        value = value[7:]
    # "a%20b" and "a+b" are "a b" in a link's query: read as the page reading it does.
    return unquote_plus(value.replace("?", " ").replace("&", " "))


def _without_hidden(markup: str, comments: list[str] | None = None) -> str:
    """``markup`` without scripts, styles and comments; the comments' text is
    added to ``comments``."""
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
            if comments is not None:
                comments.append(markup[after:end])
            pos = end + (3 if markup.startswith("-->", end) else 4)
