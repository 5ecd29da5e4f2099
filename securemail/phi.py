"""Content detectors for protected health information (PHI).

Each detector has a stable id. Like the commercial gateways, a message is PHI
only when an *identifier* (SSN, date of birth, medical record number, a
client's name) appears together with a *health* signal (an ICD-10 code next to
a diagnosis word, or a health term): "our therapy office needs toner" has a
health word but no identifier; "Jane Roe, SSN 123-45-6789, diagnosis F32.1"
has both. Detectors return ids only; the matched text is never kept.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass
from email.message import Message

from securemail.config import PolicySettings
from securemail.model import PhiSignal

__all__ = ["Detectors", "message_text"]

# Area 000, 666 and 900-999, group 00 and serial 0000 are never issued.
_SSN = re.compile(
    r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ])(?!00)\d{2}\1(?!0000)\d{4}(?![\d-])"
    r"|(?i:\b(?:ssn|social security(?: number| no\.?)?)\b)[\s:#.-]{0,6}"
    r"(?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4}(?!\d)"
)
_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:19|20)?\d{2}"
    r"|(?:19|20)\d{2}-\d{1,2}-\d{1,2}"
    r"|(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.? \d{1,2},? (?:19|20)\d{2}"
    r"|\d{1,2} (?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]* (?:19|20)\d{2})"
)
_DOB = re.compile(
    r"\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|born(?: on)?)\b[\s:#.-]{0,6}" + _DATE,
    re.IGNORECASE,
)
_ICD10 = re.compile(
    r"\b(?:diagn\w*(?: with)?|dx|icd(?:-?10)?(?:-cm)?(?: code)?|impression)\b"
    r"[^\n]{0,40}?\b[A-TV-Z][0-9][0-9AB](?:\.[0-9A-TV-Z]{1,4})?\b",
    re.IGNORECASE,
)

HEALTH_TERMS = (
    "diagnosis", "diagnosed", "psychotherapy", "therapy session", "counseling session",
    "treatment plan", "session notes", "progress note", "progress notes", "intake",
    "depression", "depressive", "anxiety", "panic disorder", "ptsd", "bipolar",
    "schizophrenia", "adhd", "ocd", "eating disorder", "anorexia", "bulimia",
    "substance use", "alcohol use", "opioid", "overdose", "suicidal", "self-harm",
    "psychiatric", "medication", "prescription", "prescribed", "dosage", "sertraline",
    "fluoxetine", "lithium", "hiv", "hepatitis", "pregnancy", "lab results", "biopsy",
    "therapy", "therapist", "counseling", "mental health", "symptoms", "prognosis",
)


@dataclass(frozen=True, slots=True)
class _Matcher:
    detector: str
    pattern: re.Pattern[str]


class Detectors:
    """Compiled once per configuration; ``scan`` is called per message."""

    def __init__(self, policy: PolicySettings, client_names: Iterable[str] = ()) -> None:
        terms = HEALTH_TERMS + tuple(t.lower() for t in policy.health_keywords)
        ident_words = tuple(policy.identifier_keywords)
        matchers = [
            _Matcher("phi-ssn", _SSN),
            _Matcher("phi-dob", _DOB),
            _Matcher("phi-mrn", re.compile(
                policy.mrn_pattern + r"|\bmedical record (?:number|no\.?|#)[\s:#]{0,4}\w{4,}",
                re.IGNORECASE)),
            _Matcher("phi-icd10", _ICD10),
            _Matcher("phi-keyword", _word_alternation(terms)),
        ]
        names = [n for n in client_names if len(n.strip()) >= 3]
        if names or ident_words:
            matchers.append(_Matcher("phi-client-name", _word_alternation([*names, *ident_words])))
        self._matchers = tuple(matchers)

    def scan(self, subject: str, body: str) -> tuple[PhiSignal, ...]:
        found: list[PhiSignal] = []
        for where, text in (("subject", subject), ("body", body)):
            if not text:
                continue
            for m in self._matchers:
                if m.pattern.search(text):
                    found.append(PhiSignal(m.detector, where))
        return tuple(found)


def _word_alternation(words: Iterable[str]) -> re.Pattern[str]:
    unique = sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True)
    body = "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in unique) or r"(?!x)x"
    return re.compile(rf"(?<!\w)(?:{body})(?!\w)", re.IGNORECASE)


_TAG = re.compile(r"<(script|style)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def message_text(message: Message, limit: int) -> str:
    """Decoded text of the text/* parts, up to ``limit`` characters in all."""
    chunks: list[str] = []
    size = 0
    for part in message.walk():
        if part.is_multipart():
            continue
        ctype = part.get_content_type()
        if not ctype.startswith("text/"):
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        charset = part.get_content_charset() or "utf-8"
        try:
            text = payload[: limit * 4].decode(charset, errors="replace")
        except LookupError:
            text = payload[: limit * 4].decode("utf-8", errors="replace")
        if ctype == "text/html":
            text = html.unescape(_TAG.sub(" ", text))
        chunks.append(text[: limit - size])
        size += len(chunks[-1])
        if size >= limit:
            break
    return "\n".join(chunks)
