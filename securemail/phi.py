"""Content detectors for protected health information (PHI).

Each detector has a stable id. Like the commercial gateways, a message is PHI
only when an *identifier* (SSN, date of birth, medical record number, a
client's name) appears together with a *health* signal (an ICD-10 code next to
a diagnosis word, or a health term): "our therapy office needs toner" has a
health word but no identifier; "Jane Roe, SSN 123-45-6789, diagnosis F32.1"
has both. Detectors return ids only; the matched text is never kept.

Speed: one Aho-Corasick pass (ahocorasick-rs) finds every whole-word phrase
(health terms, client names, and the hint words that gate the costlier
regular expressions); digit shapes are found on a digit-folded copy with
``str.find``. A 10 KiB message costs about as much as parsing it.
"""

from __future__ import annotations

import email
import re
import unicodedata
from collections.abc import Iterable, Iterator
from email.message import Message
from typing import Final

import ahocorasick_rs

from securemail.cms_content import cms_content
from securemail.config import PolicySettings
from securemail.document_process import read_document
from securemail.documents import Unreadable, is_document
from securemail.model import PhiSignal
from securemail.parse import header_texts, utf8_header
from securemail.table_text import html_with_labels, is_tab_table, with_labelled_rows

__all__ = ["HEALTH_TERMS", "Detectors", "message_text", "phrase_form"]

_MONTHS = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*"
_DATE = (
    r"(?:\d{1,2}[/.-]\d{1,2}[/.-](?:19|20)?\d{2}"
    r"|(?:19|20)\d{2}[/.-]\d{1,2}[/.-]\d{1,2}"  # 1985-03-14, 1985/03/14
    rf"|{_MONTHS}\.? \d{{1,2}}(?:st|nd|rd|th)?,? (?:19|20)\d{{2}}"  # March 14th, 1985
    rf"|\d{{1,2}}(?:st|nd|rd|th)?[ -]{_MONTHS}\.?[ -](?:19|20)?\d{{2}})"  # 14-Mar-1985
)
_DOB = re.compile(r"\b(?:dob|d\.o\.b\.?|date of birth|birth ?date|born(?: on)?)\b[\s:#.-]{0,6}"
                  + f"({_DATE})")
_MONTH_NUMBER = {m: i for i, m in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1)}


# A table written as text (a PDF's table, a fixed-width table pasted into a
# message): the headings on one line, a row on each line below, cells a space
# or more apart. A date in the rows under a "DOB" heading is a date of birth,
# an ICD-10 code under a "Diagnosis" heading a diagnosis. A heading line is
# mostly headings, two at least, and holds no value (a form's "DOB: ____" is
# no heading, nor is a sentence that mentions a name and a DOB).
_HEADING_WORDS = re.compile(
    r"(?<![\w-])(?:name|patient|client|first|last|surname|dob|d\.o\.b\.?|date of birth"
    r"|birth ?date|diagnos[ie]s|dx|icd(?:-?10)?|code|mrn|ssn|phone|address|age|sex|gender"
    r"|insurance|member|provider|therapist|clinician|id|status|notes?)(?![\w-])")
_HEADING_DOB = re.compile(
    r"(?<![\w-])(?:dob|d\.o\.b\.?|date of birth|birth ?date)(?![\w-])(?!\s*:)")
_HEADING_DX = re.compile(r"(?<![\w-])(?:diagnos[ie]s|dx|icd(?:-?10)?)(?![\w-])(?!\s*:)")
_ROW_DATE = re.compile(rf"(?<![\w/.-])({_DATE})(?![\w/-]|\.\d)")
_ROW_CODE = re.compile(r"(?<![\w.])([a-tv-z][0-9][0-9ab]\.[0-9a-tv-z]{1,4})(?![\w.])")
_TABLE_ROWS = 500  # rows read under one heading line
_HEADING_LINES = 200  # lines with a heading word looked at in one text
_TABLE_GAP = 3  # lines in a row without a value (blank ones too) end a table


def _tables(lines: list[str], heading: re.Pattern[str]) -> Iterator[int]:
    """Where the rows begin (a line index) under each heading line (see
    _heading_line) that ``heading`` matches. Only the first _HEADING_LINES
    lines that ``heading`` matches are looked at, and a caller reads at most
    _TABLE_ROWS rows under each: the work is bounded whatever the text."""
    candidates = 0
    for index, line in enumerate(lines):
        if heading.search(line) is None:
            continue
        candidates += 1
        if candidates > _HEADING_LINES:
            return
        if _heading_line(line):
            yield index + 1


def _column_matches(lowered: str, heading: re.Pattern[str], value: re.Pattern[str]
                    ) -> Iterator[re.Match[str]]:
    """The first ``value`` of each row under a heading line that ``heading``
    matches and that holds no value itself. A table ends at the next heading
    or after _TABLE_GAP lines without a value."""
    if heading.search(lowered) is None:
        return
    lines = lowered.splitlines()
    for first in _tables(lines, heading):
        if value.search(lines[first - 1]) is not None:
            continue  # a value on the heading line: a form or prose, not headings
        gap = 0
        for row in lines[first:first + _TABLE_ROWS]:
            m = value.search(row)
            if m is not None:
                gap = 0
                yield m
            elif heading.search(row) is not None:
                break  # the next table's heading
            else:
                gap += 1
                if gap >= _TABLE_GAP:
                    break


_HEADING_NAME = re.compile(r"(?<![\w-])(?:name|patient|client|surname|last)(?![\w-])")


def _name_rows(lowered: str) -> frozenset[int]:
    """Where the rows of a text table with a name column start (the first
    letter of each row under a heading line such as "Name DOB Diagnosis",
    up to a blank line or the next heading line). There a row's first cells
    may be "Roe Jane", surname and given name a plain space apart (a PDF's
    table); elsewhere that is prose ("the grant will cover")."""
    if _HEADING_NAME.search(lowered) is None:
        return frozenset()
    lines = lowered.split("\n")  # not splitlines(): offsets count "\n" only
    offsets, at = [], 0
    for line in lines:
        offsets.append(at)
        at += len(line) + 1
    starts: set[int] = set()
    for first in _tables(lines, _HEADING_NAME):
        began = False
        for row in range(first, min(len(lines), first + _TABLE_ROWS)):
            text = lines[row]
            if not began and not text.strip(" \t-=_|+"):
                continue  # a rule or a blank line under the headings
            if not text.strip() or _heading_line(text):
                break
            began = True
            starts.add(offsets[row] + len(text) - len(text.lstrip()))
    return frozenset(starts)


def _heading_line(line: str) -> bool:
    """Two column headings at least, and headings make up most of the line
    ("Name DOB Diagnosis Provider"; not "Please send the client's name and DOB")."""
    words = _HEADING_WORDS.findall(line)
    return len(set(words)) >= 2 and 2 * sum(map(len, words)) >= len("".join(line.split()))


def _column_births(lowered: str) -> set[tuple[frozenset[int], int]]:
    """Dates of birth in a text table's DOB column (two are enough to tell)."""
    births: set[tuple[frozenset[int], int]] = set()
    for m in _column_matches(lowered, _HEADING_DOB, _ROW_DATE):
        births.add(_date_key(m))
        if len(births) > 1:
            break
    return births


def _column_has_code(lowered: str) -> bool:
    """Whether a text table's diagnosis column holds an ICD-10 code."""
    return next(_column_matches(lowered, _HEADING_DX, _ROW_CODE), None) is not None


def _date_key(match: re.Match[str]) -> tuple[frozenset[int], int]:
    """A date of birth as (day and month, either order; year's last two
    digits): "03/14/1985", "14.03.85", "7/3/03" and "07/03/2003", and "March
    14th, 1985" are one date each. The year is the last number, or the first
    when it has four digits (1985-03-14)."""
    date = match.group(1)
    groups = re.findall(r"\d+", date)
    year = groups.pop(0) if len(groups[0]) == 4 else groups.pop()
    month = next((n for name, n in _MONTH_NUMBER.items() if name in date), None)
    day_month = [int(g) for g in groups] + ([month] if month is not None else [])
    return frozenset(day_month), int(year) % 100


_SSN_LABELLED = re.compile(
    r"\b(?:ssn|social security(?: number| no\.?)?)\b[\s:#.-]{0,6}(\d{9})(?!\d)")
_ICD10 = re.compile(
    r"\b(?:diagn\w*(?: with)?|dx|icd(?:-?10)?(?:-cm)?(?: code)?|impression)\b"
    r"[^\n]{0,40}?\b[A-TV-Z][0-9][0-9AB](?:\.[0-9A-TV-Z]{1,4})?\b",
    re.IGNORECASE,
)
_MEDICAL_RECORD = re.compile(r"\bmedical record (?:number|no\.?|#)[\s:#]{0,4}\w{4,}")

HEALTH_TERMS = (
    "diagnosis", "diagnosed", "psychotherapy", "therapy session", "counseling session",
    "treatment plan", "session notes", "progress note", "progress notes", "intake",
    "depression", "depressive", "anxiety", "panic disorder", "ptsd", "bipolar",
    "schizophrenia", "adhd", "ocd", "eating disorder", "anorexia", "bulimia",
    "substance use", "alcohol use", "opioid", "overdose", "suicidal", "self-harm",
    "psychiatric", "medication", "prescription", "prescribed", "dosage", "sertraline",
    "fluoxetine", "lithium", "hiv", "hepatitis", "pregnancy", "lab results", "biopsy",
    "therapy", "therapist", "counseling", "mental health", "symptoms", "prognosis",
    # Word forms and terms a clinician writes (each matched as a whole word).
    "depressed", "anxious", "suicide", "suicide attempt", "suicidality", "self harm",
    "psychosis", "psychotic", "mdd", "gad", "autism", "autistic", "asperger's", "dementia",
    "alzheimer's", "trauma", "addiction", "rehab", "detox", "relapse",
    "psychologist", "psychiatrist", "antidepressant", "zoloft", "prozac", "lexapro",
    "wellbutrin", "xanax", "adderall", "ritalin", "seroquel", "abilify", "suboxone",
    "methadone", "phq-9", "gad-7", "chemotherapy", "cancer", "tumor", "diabetes", "diabetic",
    "a1c", "hypertension", "seizure", "epilepsy", "miscarriage", "abortion",
    # Spanish, the second language of many US practices (accents are folded:
    # "diagnostico" is found too). Others: policy.health_keywords.
    "diagnóstico", "diagnosticado", "diagnosticada", "psicoterapia", "terapia", "terapeuta",
    "sesión de terapia", "notas de sesión", "plan de tratamiento", "consejería",
    "depresión", "depresivo", "depresiva", "ansiedad", "trastorno", "trastorno de pánico",
    "esquizofrenia", "trastorno bipolar", "suicida", "suicidio", "ideación suicida",
    "autolesión", "autolesiones", "psiquiatra", "psiquiátrico", "psiquiátrica", "psicólogo",
    "psicóloga", "salud mental", "medicamento", "medicamentos", "medicación",
    "receta médica", "antidepresivo", "antidepresivos", "sobredosis", "adicción", "recaída",
    "síntomas", "pronóstico", "embarazo", "aborto", "cáncer", "diabetes", "epilepsia",
    "convulsiones", "demencia", "autismo", "vih", "trauma", "estrés postraumático",
)
# Hint words gate the regular expressions (after punctuation became spaces).
_HINTS = {
    "dob": ("dob", "d o b", "birth", "birthdate", "born"),
    "ssn": ("ssn", "social security"),
    "mrn": ("mrn", "medical record"),
    "icd": ("dx", "icd", "icd-10", "icd10", "impression"),
}
# The scanned form of a text: lower case, every separator a space, every ASCII
# digit "9", and the same length as the original, so a match at i in the padded
# form is text[i - 1] there. A separator is anything but a letter, a combining
# mark or a digit: spaces, punctuation and symbols, the apostrophe of "Roe's",
# the hyphen of "post-therapy" and the curly quotes and dashes that Outlook and
# Word type for '"- included ("Jane Roe’s anxiety", "Jane Roe—anxiety").
def _is_separator(c: str) -> bool:
    return unicodedata.category(c)[0] in "PSZ" or c in "\t\n\r\x0b\x0c\x85"


_ASCII_FROM = bytes(c for c in range(128) if not chr(c).isalnum()) + b"0123456789"
_ASCII_TABLE = bytes.maketrans(_ASCII_FROM, b" " * (len(_ASCII_FROM) - 10) + b"9" * 10)
# Every non-ASCII separator of the Basic Multilingual Plane (about 4,400), as one
# character class: replaced in C, where str.translate with a table costs ~40 ns
# per character of the whole text.
_WIDE_SEPARATORS = re.compile("[" + re.escape("".join(
    chr(c) for c in range(0x80, 0x10000) if _is_separator(chr(c)))) + "]")
# What folding drops: combining marks and invisible format characters.
_MARKS = re.compile("[" + re.escape("".join(
    chr(c) for c in range(0x10000)
    if unicodedata.category(chr(c)) in ("Mn", "Me", "Cf"))) + "]")
_SSN_SHAPES = ("999 99 9999",)  # "123-45-6789" too: the hyphen is a separator


# Beyond the BMP (emoji: "anxiety😔"), looked up one by one: rare, and a table
# of every code point would cost a second at import.
_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


def _astral_separator(m: re.Match[str]) -> str:
    return " " if _is_separator(m.group()) else m.group()


def _scanned(lowered: str) -> str:
    if lowered.isascii():  # bytes.translate is twice as fast as str.translate
        return f" {lowered.encode('ascii').translate(_ASCII_TABLE).decode('ascii')} "
    # Wide separators first, one for one; then the ASCII ones on the UTF-8 bytes
    # (multi-byte sequences hold no ASCII byte, so every character keeps its place).
    wide = _WIDE_SEPARATORS.sub(" ", lowered)
    if _ASTRAL.search(wide):
        wide = _ASTRAL.sub(_astral_separator, wide)
    encoded = wide.encode("utf-8", "surrogatepass").translate(_ASCII_TABLE)
    return f" {encoded.decode('utf-8', 'surrogatepass')} "


def _phrase(text: str) -> str:
    return " ".join(_scanned(text.lower()).split())


def phrase_form(text: str) -> str:
    """``text`` in the form :meth:`Detectors.scan_names` reports names in."""
    return _phrase(text)


def _folded(text: str) -> str | None:
    """``text`` as it reads, whatever its code points: compatibility forms made
    plain (full-width letters, ligatures), accents and other combining marks
    dropped (a decomposed "José" from macOS, a mark stacked on a letter, and
    composed accents too: "Jose Nuñez", typed with some of its accents, is
    José Núñez), invisible format characters dropped (zero-width space, soft
    hyphen), case folded. Lengths change, so a folded text is scanned on its
    own. None when folding changes nothing but case (curly quotes, dashes)."""
    folded = _fold(text)
    return None if folded == text.casefold() else folded


def _fold(text: str) -> str:
    return _MARKS.sub("", unicodedata.normalize("NFKD", text)).casefold()


_NEXT_WORD = re.compile(r" +([^ ]+)")
_SPACES = re.compile(r" +")


def _continues(scanned: str, at: int, words: tuple[str, ...]) -> bool:
    """Whether ``words`` follow ``scanned[at:]`` one by one, each after any run of
    separators (spaces in the scanned form), as whole words."""
    for word in words:
        run = _SPACES.match(scanned, at)
        if run is None or not scanned.startswith(word, run.end()):
            return False
        at = run.end() + len(word)
    return scanned[at:at + 1] == " "


def _valid_ssn(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _ssn_at(lowered: str, scanned: str, start: int) -> bool:
    """``scanned[start:start + 11]`` has an SSN shape; check bounds and ranges."""
    i = start - 1  # position in ``lowered``
    before, after = lowered[i - 1:i] if i else "", lowered[i + 11:i + 12]
    if scanned[start - 1] == "9" or scanned[start + 11] == "9" or "-" in (before, after):
        return False  # part of a longer number
    return _valid_ssn(lowered[i:i + 3], lowered[i + 4:i + 6], lowered[i + 7:i + 11])


def _forms(phrase: str) -> set[str]:
    """A phrase as written and as folded (see :func:`_folded`)."""
    return {_phrase(phrase), _phrase(_fold(phrase))}


_NAME_SUFFIXES = frozenset({"jr", "sr", "ii", "iii", "iv", "md", "phd", "esq"})


def _name_forms(name: str) -> dict[str, int]:
    """A person's name as written, surname first, as records, superbills,
    rosters and lab reports write it, and without the middle names: "Jane
    Q. Roe" is also found as "Roe, Jane Q.", "ROE, JANE", "Roe | Jane"
    (table columns in row order) and "Jane Roe". Which words are the surname
    is not known ("Mary Ann De La Cruz"), so every split is taken: "De La
    Cruz, Mary Ann", "Cruz, Mary", "Mary De La Cruz"; middle names may be
    initials ("Mary A. De La Cruz").

    Maps each form to where a surname-first form turns from surname to
    given name (its word count; 0 for the other forms): there the text must
    show more than one plain space (a comma, a tab, a table cell's edge), so
    "Grant, Will" names the client Will Grant and "the grant will cover"
    does not.
    """
    words = _phrase(name).split()
    forms = dict.fromkeys(_forms(name), 0)
    if len(words) > 2 and words[-1] in _NAME_SUFFIXES:  # "John Smith Jr.": "Smith, John"
        for short, boundary in _name_forms(" ".join(words[:-1])).items():
            forms[short] = min(boundary, forms.get(short, boundary))
    for split in range(1, len(words)):
        given, surname = words[:split], words[split:]
        initials = given[:1] + [w[0] for w in given[1:]]  # "Robert J." for Robert James
        for order, boundary in ((surname + given, len(surname)),
                                (surname + given[:1], len(surname)), (given[:1] + surname, 0),
                                (initials + surname, 0), (surname + initials, len(surname)),
                                # "García, Rosa" for Rosa García López (two surnames)
                                (surname[:1] + given[:1], 1)):
            for variant in _forms(" ".join(order)):
                forms[variant] = min(boundary, forms.get(variant, boundary))
    return forms


_ADDRESS_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._%+-'")


def _address_at(lowered: str, at: int, written: frozenset[str]) -> bool:
    """Whether one of the ``written`` forms of an address stands at ``at`` in
    ``lowered`` as a whole address: not inside a longer one
    ("mary.jane@mail.example", "jane@mail.example.org")."""
    for address in written:
        if not lowered.startswith(address, at):
            continue
        before = lowered[at - 1] if at else " "
        after = lowered[at + len(address):at + len(address) + 2]
        if before in _ADDRESS_CHARS or before.isalnum():
            continue
        if after[:1].isalnum() or after[:1] in ("-", "_") or (
                after[:1] == "." and after[1:2].isalnum()):
            continue
        return True
    return False


def _plain_space(separator: str) -> bool:
    """One space as between words of a sentence (a no-break space too)."""
    return separator in (" ", "\xa0")


def _apart(padded: str, scanned: str, at: int, words: tuple[str, ...], boundary: int) -> bool:
    """Whether the separator before ``words[boundary - 1]`` (the words after
    ``scanned[at:]``) is more than one plain space in the text as written
    (``padded``: the lowered text with the scanned form's padding)."""
    for index, word in enumerate(words[:boundary]):
        run = _SPACES.match(scanned, at)
        if run is None:
            return False
        if index == boundary - 1:
            return not _plain_space(padded[run.start():run.end()])
        at = run.end() + len(word)
    return False


_MAX_DFA_PATTERNS: Final = 5000


class Detectors:
    """Compiled once per configuration; ``scan`` is called per message.

    ``client_names`` are identifiers; ``name_owners`` are ``(name, client id)``
    pairs from the directory, ``address_owners`` ``(address, client id)``
    pairs: identifiers too, and :meth:`scan_named` says which clients a
    message names (so consent given by one client never releases another
    client's PHI).
    """

    def __init__(self, policy: PolicySettings, client_names: Iterable[str] = (), *,
                 name_owners: Iterable[tuple[str, str]] = (),
                 address_owners: Iterable[tuple[str, str]] = ()) -> None:
        owners: dict[str, set[str]] = {}
        # Where a name form turns from surname to given name (see _name_forms).
        self._boundary: dict[str, int] = {}

        def name_forms(name: str) -> dict[str, int]:
            forms = _name_forms(name)
            for form, boundary in forms.items():
                self._boundary[form] = min(boundary, self._boundary.get(form, boundary))
            return forms

        for name, client_id in name_owners:
            if len(name.strip()) >= 3:
                for form in name_forms(name):
                    owners.setdefault(form, set()).add(client_id)
        # A client's email address identifies the client as a name does (HIPAA
        # lists it among the 18 identifiers): "jane.roe@mail.example" is found
        # as written, its separators as any separators ("jane roe mail example").
        self._address_text: dict[str, frozenset[str]] = {}  # phrase -> the address as written
        for address, client_id in address_owners:
            if "@" in address:
                written = frozenset({address.lower(), _fold(address).lower()})
                for form in _forms(address):
                    owners.setdefault(form, set()).add(client_id)
                    self._address_text[form] = self._address_text.get(form, frozenset()) | written
        self._owners = {p: frozenset(ids) for p, ids in owners.items()}
        keywords = {f for n in policy.identifier_keywords if len(n.strip()) >= 3
                    for f in _forms(n)}
        for form in keywords:  # matched as written, whatever the names say
            self._boundary[form] = 0
        groups: dict[str, set[str]] = {
            "health": {f for t in (*HEALTH_TERMS, *policy.health_keywords) for f in _forms(t)},
            "identifier": {f for n in client_names if len(n.strip()) >= 3
                           for f in name_forms(n)} | keywords | set(self._owners),
        }
        for hint, words in _HINTS.items():
            groups[hint] = {_phrase(w) for w in words}
        patterns: list[str] = []
        self._group_of: list[str] = []
        self._phrase_of: list[str] = []
        # A phrase of several words ("Jane Roe", "mental health") is found by its
        # first word, looked up by its second (one look-up however many clients
        # share a first name), then checked word by word across any run of
        # separators: a line break, two spaces or a removed HTML tag must not split it.
        self._rest_of: dict[int, dict[str, list[tuple[tuple[str, ...], str, str, int]]]] = {}
        first_words: dict[str, int] = {}
        for group, phrases in groups.items():
            for p in sorted(phrases - {""}):
                first, *rest = p.split(" ")
                if not rest:
                    patterns.append(f" {p} ")
                    self._group_of.append(group)
                    self._phrase_of.append(p)
                    continue
                if first not in first_words:
                    first_words[first] = len(patterns)
                    patterns.append(f" {first} ")
                    self._group_of.append("phrase")
                    self._phrase_of.append("")
                by_second = self._rest_of.setdefault(first_words[first], {})
                boundary = self._boundary.get(p, 0) if group == "identifier" else 0
                by_second.setdefault(rest[0], []).append((tuple(rest[1:]), group, p, boundary))
        for shape in _SSN_SHAPES:
            patterns.append(shape)
            self._group_of.append("ssn-shape")
            self._phrase_of.append("")
        patterns.append(" diagn")  # any word starting so: diagnosis, Diagnose, diagnóstico
        self._group_of.append("icd")
        self._phrase_of.append("")
        # A DFA scans ~25% faster than the NFA the library picks past 100
        # patterns; its memory grows with the patterns, so a large directory
        # (thousands of names, each in several forms) keeps the NFA.
        dfa = ahocorasick_rs.Implementation.DFA if len(patterns) <= _MAX_DFA_PATTERNS else None
        self._automaton = ahocorasick_rs.AhoCorasick(patterns, implementation=dfa)
        # ASCII text (most mail) is scanned as bytes, where match offsets need
        # no conversion to character offsets: ~30% faster.
        self._ascii_automaton = ahocorasick_rs.BytesAhoCorasick(
            [p.encode() for p in patterns], implementation=dfa)
        self._custom_mrn = policy.mrn_pattern != PolicySettings.mrn_pattern
        self._mrn = re.compile(policy.mrn_pattern, re.IGNORECASE)

    def scan(self, subject: str, body: str) -> tuple[PhiSignal, ...]:
        return self.scan_named(subject, body)[0]

    def scan_named(self, subject: str, body: str
                   ) -> tuple[tuple[PhiSignal, ...], frozenset[str]]:
        """The detector hits, and the ids of the directory clients whose names appear."""
        found, names = self.scan_names(subject, body)
        return found, frozenset().union(*names.values())

    def scan_names(self, subject: str, body: str
                   ) -> tuple[tuple[PhiSignal, ...], dict[str, frozenset[str]]]:
        """The detector hits, and each directory name or address found (in its
        scanned form: lower case, separators as single spaces) with the ids of
        the clients it belongs to (several when clients share a name)."""
        found: list[PhiSignal] = []
        named: dict[str, frozenset[str]] = {}
        people: set[tuple[str, object]] = set()  # distinct dates of birth and SSNs
        for where, text in (("subject", subject), ("body", body)):
            if not text:
                continue
            folded = None
            if not text.isascii():
                # A lone surrogate (undecodable header bytes) becomes "?": same
                # length, and the matcher needs valid Unicode.
                text = text.encode("utf-8", "replace").decode("utf-8")
                # What a reader sees may hide behind marks, invisible characters
                # or compatibility forms: the folded text is scanned too.
                folded = _folded(text)
            hits, names, persons = self._scan_one(text)
            if folded is not None:
                more, more_names, more_persons = self._scan_one(folded)
                hits += [h for h in more if h not in hits]
                names |= more_names
                persons |= more_persons
            found.extend(PhiSignal(d, where) for d in hits)
            for name in names:
                owners = self._owners.get(name)
                if owners:
                    named[name] = owners
            people |= persons
            # Two dates of birth, or two SSNs, in the subject and text together:
            # two people at least.
            if any(sum(kind == k for kind, _ in people) > 1 for k in ("dob", "ssn")) and not any(
                    s.detector == "phi-several-people" for s in found):
                found.append(PhiSignal("phi-several-people", where))
        return tuple(found), named

    def _scan_one(self, text: str) -> tuple[list[str], set[str], set[tuple[str, object]]]:
        lowered = text.lower()
        scanned = _scanned(lowered)
        padded = ""  # the text as written, aligned with ``scanned``: made when first needed
        name_rows: frozenset[int] | None = None  # where table rows start: made when needed
        groups: set[str] = set()
        names: set[str] = set()  # identifier phrases found (to name their clients)
        icd_at: list[int] = []  # where a diagnosis word starts (in ``lowered``)
        ssn = False
        people_ssns: set[str] = set()  # distinct SSNs: more than one, more than one person
        matches = (self._ascii_automaton.find_matches_as_indexes(scanned.encode("ascii"),
                                                                 overlapping=True)
                   if scanned.isascii() else
                   self._automaton.find_matches_as_indexes(scanned, overlapping=True))
        for i, start, end in matches:
            group = self._group_of[i]
            if group == "ssn-shape":
                if _ssn_at(lowered, scanned, start):
                    ssn = True
                    i = start - 1
                    people_ssns.add(lowered[i:i + 3] + lowered[i + 4:i + 6] + lowered[i + 7:i + 11])
            elif group == "phrase":
                second = _NEXT_WORD.match(scanned, end - 1)  # across any run of separators
                if second is None:
                    continue
                for rest, phrase_group, phrase, boundary in self._rest_of[i].get(
                        second.group(1), ()):
                    if phrase_group == "identifier":
                        if phrase in names or not _continues(scanned, second.end(), rest):
                            continue
                        if boundary and not padded:
                            padded = f" {lowered} "
                        if boundary == 1 and _plain_space(padded[end - 1:second.start(1)]):
                            if name_rows is None:
                                name_rows = _name_rows(lowered)
                            if start not in name_rows:
                                continue  # "grant will": not "Grant, Will"
                        if boundary > 1 and not _apart(padded, scanned, second.end(), rest,
                                                       boundary - 1):
                            continue
                        if phrase in self._address_text and not _address_at(
                                lowered, start, self._address_text[phrase]):
                            continue  # "mary.jane@mail.example", "jane, mail: example"
                        groups.add(phrase_group)
                        names.add(phrase)
                    elif phrase_group not in groups and _continues(scanned, second.end(), rest):
                        groups.add(phrase_group)
            else:
                groups.add(group)
                if group == "identifier":
                    names.add(self._phrase_of[i])
                elif group == "icd":
                    icd_at.append(start)  # scanned[start] is the space before the word
        hits = []
        spaced = " ".join(lowered.split()) if groups & {"ssn", "dob", "mrn"} else ""
        if "ssn" in groups:
            people_ssns.update(d for d in _SSN_LABELLED.findall(spaced)
                               if _valid_ssn(d[0:3], d[3:5], d[5:9]))
        if ssn or people_ssns:
            hits.append("phi-ssn")
        births: set[tuple[frozenset[int], int]] = set()
        for m in _DOB.finditer(spaced) if "dob" in groups else ():
            births.add(_date_key(m))
            if len(births) > 1:
                break  # several people: no need to read every date
        if "dob" in groups and len(births) < 2:
            births.update(_column_births(lowered))
        if births:
            hits.append("phi-dob")
        if ("mrn" in groups or self._custom_mrn) and (
                self._mrn.search(text) or _MEDICAL_RECORD.search(" ".join(lowered.split()))):
            hits.append("phi-mrn")
        if "identifier" in groups:
            hits.append("phi-client-name")
        # The code is looked for right after each diagnosis word the matcher
        # found (a search of the whole text costs ~0.4 ms per 10 KiB). In ASCII
        # text every place the pattern can start is such a word; beyond ASCII
        # a word may start where the matcher sees none (after a private-use
        # bullet, a spacing mark) or lower() may change it ("İCD" -> "i̇cd"):
        # there the whole text is searched as written, as before.
        if "icd" in groups and (any(_ICD10.match(lowered, at) for at in icd_at) or (
                not text.isascii() and _ICD10.search(text)) or _column_has_code(lowered)):
            hits.append("phi-icd10")
        if "health" in groups:
            hits.append("phi-keyword")
        people: set[tuple[str, object]] = {("dob", b) for b in births}
        people.update(("ssn", n) for n in people_ssns)
        return hits, names, people


# Attachments that are text in all but name: exports of patient lists are
# typically CSV, JSON or XML, often sent as application/octet-stream.
_TEXT_LIKE = re.compile(r"application/(json|xml|csv|x-csv|yaml|x-yaml|[\w.+-]+\+(json|xml))")
_TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".xml", ".yaml", ".yml", ".md", ".log",
                  ".ics", ".vcf", ".htm", ".html")


def _readable(ctype: str, name: str) -> bool:
    if ctype.startswith("text/") or _TEXT_LIKE.fullmatch(ctype):
        return True
    # Windows labels a .csv application/vnd.ms-excel; many tools octet-stream.
    return ctype.startswith("application/") and name.lower().endswith(_TEXT_SUFFIXES)


# "text/plain; charset=utf-8", the common case, read without the email
# package's full parameter parser (a fifth of the cost of reading the text).
_SIMPLE_CHARSET = re.compile(
    r'\s*[\w.+-]+/[\w.+-]+\s*;\s*charset\s*=\s*"?([A-Za-z0-9_.:+-]{1,40})"?\s*', re.ASCII)


def _charset(part: Message) -> str | None:
    value = part.get("content-type")
    if isinstance(value, str):
        simple = _SIMPLE_CHARSET.fullmatch(value)
        if simple is not None:
            return simple.group(1).lower()
    return part.get_content_charset()


def _bom_charset(payload: bytes) -> str:
    """No charset given: a byte-order mark says UTF-16 (Excel's "Unicode text")."""
    if payload[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    return "utf-8-sig" if payload[:3] == b"\xef\xbb\xbf" else "utf-8"


_CASE_JOIN = re.compile(r"(?<=[a-z\u00df-\u00ff])(?=[A-Z\u00c0-\u00de])")


def _name_words(name: str) -> str:
    """A file name, and when it joins words by case ("JaneSmith_Statement.pdf")
    the same name with those words apart, for the name scanner."""
    apart = _CASE_JOIN.sub(" ", name)
    return name if apart == name else f"{name}\n{apart}"


def _looks_like_text(payload: bytes) -> bool:
    """Whether a part labelled as something else (octet-stream, a PDF that is
    no PDF) is plain text a reader's program would show: UTF-8 or a UTF-16
    BOM, no NUL, hardly any control characters in its first 4 KiB."""
    head = payload[:4096]
    if not head:
        return False
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return True
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 3:  # not merely a character cut at 4 KiB
            return False
    controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
    return controls * 100 <= len(head)


_CONTROL_BYTES = bytes([*range(9), *range(14, 32), 127])


def _filename(part: Message) -> str:
    if part.get("content-disposition") is None and "name" not in str(
            part.get("content-type", "")).lower():
        return ""  # the common body part: skip the parameter parsing
    try:
        name = _with_utf8_headers(part).get_filename()
    except (ValueError, LookupError, TypeError):  # a broken RFC 2231 parameter
        return ""
    return str(name) if name else ""


def _with_utf8_headers(part: Message) -> Message:
    """``part``, or for raw 8-bit (SMTPUTF8) parameters a copy of its two
    headers with those bytes read as UTF-8 (``Message.get`` makes them U+FFFD)."""
    raw = [(k, v) for k, v in part.raw_items()
           if k.lower() in ("content-disposition", "content-type")]
    if all(v.isascii() for _, v in raw):
        return part
    probe = Message()
    for k, v in raw:
        probe[k] = utf8_header(v, lossy=True)
    return probe


# What a mail program shows of a forwarded message (Forward as attachment).
_PKCS7_TYPES = ("application/pkcs7-mime", "application/x-pkcs7-mime")
_SHOWN_HEADERS = ("subject", "from", "to", "cc", "reply-to")
_MAX_NESTING = 4  # forwarded messages inside forwarded messages, read this deep


def _shown_headers(inner: Message) -> str:
    return "\n".join(text for name in _SHOWN_HEADERS for text in header_texts(inner, name))


_TABLE_TYPES = ("text/csv", "text/tab-separated-values")


def message_text(message: Message, limit: int, *, clear_only: bool = False,
                 forwarded: list[Message] | None = None, _depth: int = 0
                 ) -> tuple[str, bool]:
    """Decoded text of the text/* parts plus every multipart preamble and epilogue
    (some mail programs show them), up to ``limit`` characters in all.

    A forwarded message counts with what a mail program shows of it: its
    Subject, From, To, Cc and Reply-To, whether it is a ``message/rfc822``
    part or an ``.eml`` file attached as anything else.

    Returns ``(text, truncated)``; a caller must treat text it did not see as
    possibly PHI. ``clear_only`` reads only preambles and epilogues (for an
    encrypted message, whose parts cannot be read). The forwarded messages
    read are appended to ``forwarded`` when it is given.
    """
    chunks: list[str] = []
    size = 0

    def add(text: str) -> bool:
        nonlocal size
        chunks.append(text[: limit - size])
        size += len(chunks[-1])
        return len(text) > len(chunks[-1])

    for part in message.walk():
        if part.is_multipart():
            for extra in (part.preamble, part.epilogue):
                if extra and extra.strip() and add(utf8_header(extra, lossy=True)):
                    return "\n".join(chunks), True
            if not clear_only and part.get_content_maintype() == "message":
                inner = part.get_payload(0) if part.get_payload() else None
                if isinstance(inner, Message):
                    if forwarded is not None:
                        forwarded.append(inner)
                    if add(_shown_headers(inner)):
                        return "\n".join(chunks), True
            continue
        ctype = part.get_content_type()
        name = _filename(part)
        if name and add(_name_words(name)):  # "Jane_Roe_discharge.pdf": as much as the text
            return "\n".join(chunks), True
        if clear_only:
            continue
        signed = ctype in _PKCS7_TYPES or name.lower().endswith((".p7m", ".p7z"))
        if name.lower().endswith(".eml") or signed:
            # A forwarded message saved to a file and attached under any type
            # (octet-stream, text/plain, ...): read as the message it is. So is
            # the body of an opaque-signed or compressed S/MIME part: signed is
            # not encrypted, anyone can read it.
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                continue
            if signed:
                try:
                    inner = cms_content(payload)
                except Unreadable:
                    return "\n".join(chunks), True
                if inner is None:
                    continue  # encrypted (or a detached signature): nothing in clear
                payload = inner
            if _depth >= _MAX_NESTING:
                return "\n".join(chunks), True  # not read: counts as unscanned
            try:
                inner_message = email.message_from_bytes(payload)
                inner_text, cut = message_text(inner_message, limit - size,
                                               forwarded=forwarded, _depth=_depth + 1)
            except RecursionError:  # MIME nested past what the parser can walk
                return "\n".join(chunks), True
            if forwarded is not None and not signed:
                forwarded.append(inner_message)
            shown = "" if signed else _shown_headers(inner_message)
            if add(shown) or add(inner_text) or cut:
                return "\n".join(chunks), True
            continue
        # A PDF, Word, Excel, PowerPoint, OpenDocument, RTF, ZIP or tar file,
        # found by its first bytes whatever its label (text/plain included):
        # its text is read. One that cannot be read in full (a password,
        # damage, past the limits) counts as unscanned. Images and the like:
        # name only.
        readable = _readable(ctype, name)
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        if is_document(payload):
            try:
                document = read_document(payload, limit - size)
            except Unreadable:
                return "\n".join(chunks), True
            if document is not None and add(document):
                return "\n".join(chunks), True
            continue
        if not readable and not _looks_like_text(payload):
            continue  # an image, audio, an unknown binary: its name only
        charset = _charset(part) or _bom_charset(payload)
        try:
            text = payload.decode(charset, errors="replace")
        except (LookupError, ValueError):  # unknown charset, or a codec with no "replace"
            text = payload.decode("utf-8", errors="replace")
        if ctype == "text/html" or name.lower().endswith((".htm", ".html")):
            text = html_with_labels(text, limit - size)
        elif ctype in _TABLE_TYPES or name.lower().endswith((".csv", ".tsv")) or (
                name and is_tab_table(text)):
            text = with_labelled_rows(text, name, limit - size)
        if add(text):
            return "\n".join(chunks), True
    return "\n".join(chunks), False
