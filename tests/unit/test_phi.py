"""PHI detectors: identifiers paired with health terms, like commercial DLP."""

from __future__ import annotations

import email
from email.message import EmailMessage, Message

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from securemail.config import PolicySettings
from securemail.model import HEALTH_DETECTORS, IDENTIFIER_DETECTORS, Encryption, Facts
from securemail.phi import Detectors, message_text

DET = Detectors(PolicySettings(), client_names=["Jane Roe"])


def kinds(subject: str = "", body: str = "") -> set[str]:
    return {s.detector for s in DET.scan(subject, body)}


def is_phi(subject: str = "", body: str = "") -> bool:
    facts = Facts("", "", Encryption.NONE, (), phi_signals=DET.scan(subject, body))
    return facts.phi


@pytest.mark.parametrize("ssn", ["123-45-6789", "123 45 6789", "SSN: 123456789",
                                 "social security number 078051120"])
def test_valid_ssns(ssn: str) -> None:
    assert "phi-ssn" in kinds(body=f"patient {ssn} on file")


@pytest.mark.parametrize("bad", ["000-12-3456", "666-12-3456", "900-12-3456", "123-00-4567",
                                 "123-45-0000", "123-45-67890", "call 555-123-4567",
                                 "order 123456789"])
def test_invalid_ssns_are_ignored(bad: str) -> None:
    assert "phi-ssn" not in kinds(body=bad)


@pytest.mark.parametrize("text", ["DOB: 04/12/1988", "date of birth 1988-04-12",
                                  "born on March 3, 1990", "D.O.B. 3 March 1990"])
def test_dates_of_birth(text: str) -> None:
    assert "phi-dob" in kinds(body=text)


def test_plain_dates_are_not_dob() -> None:
    assert "phi-dob" not in kinds(body="Your appointment is on 04/12/2026.")


def test_icd10_needs_a_diagnosis_word() -> None:
    assert "phi-icd10" in kinds(body="Diagnosis: F32.1 (moderate)")
    assert "phi-icd10" in kinds(body="dx F41.1")
    assert "phi-icd10" not in kinds(body="Room F32 is on the second floor")


def test_mrn_default_pattern() -> None:
    assert "phi-mrn" in kinds(body="MRN: 00451234")
    assert "phi-mrn" in kinds(body="medical record number 8812345")


def test_custom_mrn_pattern() -> None:
    det = Detectors(PolicySettings(mrn_pattern=r"\bRC-\d{6}\b"))
    assert any(s.detector == "phi-mrn" for s in det.scan("", "chart RC-123456"))


def test_toner_is_not_phi() -> None:
    assert kinds(body="Our therapy office needs toner.") == {"phi-keyword"}
    assert not is_phi(body="Our therapy office needs toner.")


def test_identifier_plus_diagnosis_is_phi() -> None:
    assert is_phi(body="Jane Roe, SSN 123-45-6789, diagnosis F32.1")


def test_subject_is_checked_too() -> None:
    signals = DET.scan("Jane Roe - depression follow-up", "")
    assert {s.where for s in signals} == {"subject"}
    assert is_phi(subject="Jane Roe - depression follow-up")


def test_client_name_alone_is_not_phi() -> None:
    assert not is_phi(body="Jane Roe called about parking.")


def test_custom_keywords_extend_health_terms() -> None:
    det = Detectors(PolicySettings(health_keywords=("EMDR",)))
    assert any(s.detector == "phi-keyword" for s in det.scan("", "EMDR next week"))


def test_detector_ids_are_classified() -> None:
    assert {"phi-ssn", "phi-dob", "phi-mrn", "phi-client-name", "phi-unscanned"} == \
        IDENTIFIER_DETECTORS
    assert {"phi-icd10", "phi-keyword", "phi-unscanned"} == HEALTH_DETECTORS


@pytest.mark.parametrize("body", [
    "our client Jane\r\nRoe: her depression is improving",   # a line break inside the name
    "our client Jane  Roe has depression",                    # two spaces
    "our client Jane \r\nRoe has depression",                 # format=flowed soft break
    "our client Jane\u2003Roe has depression",                # a Unicode space
    "our client Jane,\r\n  Roe has depression",               # folded with punctuation
])
def test_a_name_split_across_separators_is_still_one_name(body: str) -> None:
    assert kinds(body=body) >= {"phi-client-name", "phi-keyword"}
    assert is_phi(body=body)


def test_phrases_split_by_an_html_tag_are_found() -> None:
    import email

    from securemail.phi import message_text

    msg = email.message_from_string(
        "Content-Type: text/html; charset=utf-8\n\n"
        "<p>Our client Jane <b>Roe</b> has a mental<br>health plan; social <i>security</i>"
        " 078051120</p>")
    text, truncated = message_text(msg, 100_000)
    assert not truncated
    assert kinds(body=text) >= {"phi-client-name", "phi-keyword", "phi-ssn"}


@given(st.lists(st.sampled_from([" ", "\r\n", "\t", ",", ".", "\u00a0", "\u2003", "(", "\n> "]),
                min_size=1, max_size=12))
def test_any_run_of_separators_inside_a_name_is_one_space(run: list[str]) -> None:
    body = f"we saw Jane{''.join(run)}Roe about her depression today"
    assert kinds(body=body) >= {"phi-client-name", "phi-keyword"}


@pytest.mark.parametrize(("ctype", "filename"), [
    ("text/csv", "list.csv"), ("application/json", "export.json"),
    ("application/xml", "ccd.xml"), ("application/fhir+json", "bundle.json"),
    ("application/octet-stream", "patients.csv"), ("application/vnd.ms-excel", "x.csv")])
def test_text_like_attachments_are_scanned(ctype: str, filename: str) -> None:
    from email.message import EmailMessage

    from securemail.phi import message_text

    msg = EmailMessage()
    msg.set_content("see attached")
    maintype, subtype = ctype.split("/")
    msg.add_attachment(b"name,dx\nJane Roe,depression F32.1\n", maintype=maintype,
                       subtype=subtype, filename=filename)
    text, _ = message_text(msg, 100_000)
    assert kinds(body=text) >= {"phi-client-name", "phi-keyword"}  # .csv from Windows too


def test_a_utf16_attachment_without_charset_is_read() -> None:
    from email.message import EmailMessage

    from securemail.phi import message_text

    msg = EmailMessage()
    msg.set_content("see attached")
    msg.add_attachment("name,dx\nJane Roe,depression\n".encode("utf-16"),
                       maintype="application", subtype="octet-stream", filename="list.csv")
    text, _ = message_text(msg, 100_000)
    assert kinds(body=text) >= {"phi-client-name", "phi-keyword"}


@pytest.mark.parametrize("run", [" " * 300, "\u00a0" * 90, "\r\n" * 100])
def test_a_long_run_between_words_still_joins_them(run: str) -> None:
    assert kinds(body=f"Jane{run}Roe has depression") >= {"phi-client-name", "phi-keyword"}


def test_many_clients_sharing_a_first_name_stay_fast() -> None:
    import time

    names = [f"Maria Surname{i}" for i in range(300)]
    det = Detectors(PolicySettings(), client_names=names)
    text = "maria " * 300_000  # ~1.8 MB of the shared first name
    started = time.perf_counter()
    det.scan("", text)
    assert time.perf_counter() - started < 5.0  # was minutes: every hit tried every name
    assert {s.detector for s in det.scan("", "maria\r\nsurname299 depression")} >= {
        "phi-client-name"}


def test_an_attachment_name_is_scanned() -> None:
    from email.message import EmailMessage

    from securemail.phi import message_text

    msg = EmailMessage()
    msg.set_content("see attached")
    msg.add_attachment(b"%PDF-1.7 ...", maintype="application", subtype="pdf",
                       filename="Jane_Roe depression intake.pdf")
    text, _ = message_text(msg, 100_000)
    assert kinds(body=text) >= {"phi-client-name", "phi-keyword"}


# Words end at any punctuation, ASCII or typographic: what Outlook and Word type.
@pytest.mark.parametrize("text", [
    "Jane Roe's therapy is going well, less depression.",
    "Jane Roe\u2019s anxiety",
    "\u201cJane Roe\u201d \u2013 anxiety",
    "Jane Roe\u2014anxiety",
    "Re: Jane Roe--anxiety",
    "Jane Roe: post-therapy check-in, anxiety-related",
    "JANE ROE\u2019S ANXIETY",
    "\u2022 Jane Roe \u2022 depression",
])
def test_punctuation_never_hides_a_name_or_term(text: str) -> None:
    assert is_phi(body=text)
    assert is_phi(subject=text)


def test_names_with_apostrophes_and_hyphens_match_either_spelling() -> None:
    det = Detectors(PolicySettings(), client_names=["Mary-Jane O'Brien"])
    for text in ("Mary-Jane O'Brien, anxiety", "Mary-Jane O\u2019Brien anxiety",
                 "mary jane o brien: anxiety"):
        assert {s.detector for s in det.scan("", text)} == {"phi-client-name", "phi-keyword"}


@pytest.mark.parametrize("longer", ["12-123-45-6789", "123-45-6789-1", "1123-45-6789"])
def test_an_ssn_shape_inside_a_longer_number_is_not_an_ssn(longer: str) -> None:
    assert "phi-ssn" not in kinds(body=f"order {longer} shipped")


def test_scan_named_says_which_clients_a_message_names() -> None:
    det = Detectors(PolicySettings(), name_owners=[("Jane Roe", "c-1"), ("Tommy Smith", "c-2"),
                                                   ("Jane Roe", "c-3")])
    signals, named = det.scan_named("Tommy Smith\u2019s plan", "and Jane Roe too, anxiety")
    assert named == {"c-1", "c-2", "c-3"}
    assert {s.detector for s in signals} == {"phi-client-name", "phi-keyword"}
    assert det.scan_named("", "nobody named; anxiety")[1] == frozenset()


def _forward(inner: bytes, *, as_file: bool) -> Message:
    outer = EmailMessage()
    outer["Subject"] = "FYI"
    outer.set_content("See attached.")
    if as_file:  # webmail: the forward saved as a file, labelled octet-stream
        outer.add_attachment(inner, maintype="application", subtype="octet-stream",
                             filename="Follow-up.eml")
    else:  # "Forward as attachment"
        outer.add_attachment(email.message_from_bytes(inner))
    return email.message_from_bytes(outer.as_bytes())


INNER = (b"From: Jane Roe <jane@mail.example>\r\nTo: dr@riverside.example\r\n"
         b"Subject: Jane Roe - depression treatment plan\r\n\r\nSee you Tuesday.\r\n")


@pytest.mark.parametrize("as_file", [False, True])
def test_a_forwarded_messages_headers_and_text_are_read(as_file: bool) -> None:
    text, truncated = message_text(_forward(INNER, as_file=as_file), 100_000)
    assert "Jane Roe - depression treatment plan" in text and "See you Tuesday." in text
    assert not truncated
    assert is_phi(body=text)


def test_forwards_nested_too_deep_count_as_unscanned() -> None:
    message = email.message_from_bytes(INNER)
    for _ in range(6):
        message = _forward(message.as_bytes(), as_file=True)
    assert message_text(message, 100_000)[1] is True


@pytest.mark.parametrize("text", [
    "Jane\U0001F642Roe, anxiety\U0001F614",  # emoji (beyond the BMP) end words too
    "Ja\u200bne Roe anxiety",  # zero-width space inside the name
    "Jane Roe anx\u00adiety",  # soft hyphen inside the term
    "\uff2a\uff41\uff4e\uff45 \uff32\uff4f\uff45 anxiety",  # full-width letters
    "J\u0308ane Roe anxiety",  # a mark stacked on a letter
])
def test_what_reads_as_a_name_is_a_name(text: str) -> None:
    assert is_phi(body=text) and is_phi(subject=text)


def test_accents_match_in_any_form_and_spelled_without() -> None:
    det = Detectors(PolicySettings(), name_owners=[("José Núñez", "c-9")])
    for text in ("José Núñez, anxiety",                      # composed (NFC)
                 "Jose\u0301 Nu\u0301n\u0303ez, anxiety",    # decomposed (macOS NFD)
                 "JOSE NUNEZ anxiety"):                       # typed without accents
        signals, named = det.scan_named("", text)
        assert named == {"c-9"}, text
        assert {s.detector for s in signals} == {"phi-client-name", "phi-keyword"}


def test_undecodable_header_bytes_do_not_stop_the_scan() -> None:
    assert is_phi(subject="Jane\udc80Roe anxiety")  # a lone surrogate from 8-bit bytes


def test_an_eml_attached_as_text_is_read_as_a_message() -> None:
    outer = EmailMessage()
    outer.set_content("FYI")
    inner = INNER.replace(b"See you Tuesday.", b"U2VlIHlvdSBUdWVzZGF5Lg==").replace(
        b"Subject:", b"Content-Transfer-Encoding: base64\r\nSubject:")
    outer.add_attachment(inner, maintype="text", subtype="plain", filename="fwd.eml")
    text, _ = message_text(email.message_from_bytes(outer.as_bytes()), 100_000)
    assert "See you Tuesday." in text and "depression treatment plan" in text


def test_broken_parts_never_crash_the_scan() -> None:
    # A codec that cannot "replace" (idna), and an attached .eml nested past
    # what the parser can walk: read what can be read, count the rest unscanned.
    idna = (b"From: a@x.example\r\nContent-Type: text/plain; charset=idna\r\n\r\n"
            b"Jane Roe \xff anxiety\r\n")
    text, truncated = message_text(email.message_from_bytes(idna), 100_000)
    assert "anxiety" in text and not truncated
    deep = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i)
                    for i in range(3000))
    outer = EmailMessage()
    outer.set_content("FYI")
    outer.add_attachment(deep, maintype="application", subtype="octet-stream",
                         filename="deep.eml")
    assert message_text(email.message_from_bytes(outer.as_bytes()), 100_000)[1] is True


@given(st.sampled_from(["text/plain", "TEXT/HTML", "text/csv"]),
       st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "windows-1252", "us-ascii", "x-weird"]),
       st.sampled_from(['; charset={}', ';charset="{}"', '; charset = {} ', '; CHARSET={}',
                        '; charset={}; format=flowed', "; charset*=utf-8''{}",
                        '; charset="{}" (comment)', '']))
def test_the_quick_charset_reading_agrees_with_the_email_package(
        ctype: str, charset: str, form: str) -> None:
    from email.message import Message as Plain

    from securemail.phi import _charset

    part = Plain()
    part["Content-Type"] = ctype + form.format(charset)
    assert _charset(part) == part.get_content_charset()


_ICD_WORDS = st.sampled_from(["diagnosis", "Diagnosed with", "DX", "dx:", "ICD-10", "icd10",
                              "ICD-10-CM code", "impression", "diagnóstico", "xdx", "pre-dx",
                              "ICD", "F32.1", "f41.9", "Z00", "U07.1", "B20", "A09", "lorem",
                              "\n", " ", ",", "  (", "-", "é", "\u2014"])


@given(st.lists(_ICD_WORDS | st.sampled_from(["İCD", "DİAGNOSİS", "İ32", "\uf0b7Dx", "ःDX",
                                               "\ue000", "\xad", "\U0001F614"]),
                max_size=14).map(" ".join))
@example("diagnosis DX \n F32.1")  # a table: the code under its heading (found by CI)
def test_the_icd10_code_is_found_exactly_where_a_whole_text_search_finds_it(text: str) -> None:
    from securemail.phi import _ICD10, _column_has_code, _fold, _scanned

    found = "phi-icd10" in kinds(body=text)
    scanned = _scanned(text.lower())
    word_seen = " diagn" in scanned or any(
        f" {w} " in scanned for w in ("dx", "icd", "icd99", "impression"))
    # Never less than before (a diagnosis word seen, then the pattern anywhere)...
    if word_seen and _ICD10.search(text):
        assert found, text
    # ...and never a code the pattern does not see in the text as written or
    # folded, or a table's diagnosis column holds ("diagnosis DX" over "F32.1").
    if found:
        assert (_ICD10.search(text) or _ICD10.search(_fold(text))
                or _column_has_code(text.lower())), text


@pytest.mark.parametrize("text", [
    "DOB 01/02/1980\nDx: deferred to Dr. Smith\nİCD-10 F32.1",  # Turkish capital İ
    "DOB 01/02/1980\nDx: deferred\n\uf0b7Dx F32.1",  # Word's Symbol-font bullet
    "DOB 01/02/1980\nDx: deferred\nDİAGNOSİS F32.1",
])
def test_a_code_after_a_word_the_matcher_cannot_see_is_still_found(text: str) -> None:
    assert "phi-icd10" in kinds(body=text) and is_phi(body=text)


ROSTER_DET = Detectors(PolicySettings(), name_owners=[("Jane Q. Roe", "c-1"),
                                                      ("Mary Ann Smith", "c-2"),
                                                      ("Rosa María De La Cruz", "c-3"),
                                                      ("Will Grant", "c-4"),
                                                      ("Grace Hope", "c-5"),
                                                      ("John Smith Jr.", "c-6"),
                                                      ("Rosa García López", "c-7")])


@pytest.mark.parametrize(("text", "client"), [
    ("Patient: ROE, JANE Q.  DOB 03/14/1985", "c-1"),  # a lab report's header
    ("Roe, Jane", "c-1"),
    ("Roe\tJane\t03/14/1985\tF32.1", "c-1"),  # a roster row, surname column first
    ("Dear Jane Roe,", "c-1"),  # the middle initial left out
    ("Smith, Mary Ann", "c-2"), ("SMITH, MARY", "c-2"), ("Mary Smith", "c-2"),
    ("DE LA CRUZ, ROSA MARIA", "c-3"), ("De la Cruz, Rosa", "c-3"), ("Rosa De La Cruz", "c-3"),
    ("Cruz, Rosa María", "c-3"), ("Grant, Will", "c-4"), ("GRANT\tWILL", "c-4"),
    ("Hope,Grace", "c-5"), ("De La Cruz\tRosa", "c-3"), ("Smith, John", "c-6"),
    ("John Smith", "c-6"), ("SMITH JR, JOHN", "c-6"), ("García, Rosa", "c-7"),
    ("GARCIA LOPEZ, ROSA", "c-7")])
def test_a_client_named_surname_first_or_without_middle_names_is_found(
        text: str, client: str) -> None:
    signals, named = ROSTER_DET.scan_named("", text)
    assert "phi-client-name" in {s.detector for s in signals}
    assert named == {client}


@pytest.mark.parametrize("text", ["Ann Smith", "Roe Smith", "Jane Smith", "Roe, Mary",
                                  "we hope jane is fine", "roe", "Maria De La Cruz",
                                  "Cruz, Maria",
                                  # Surname first needs more than one plain space between:
                                  # a comma, a tab, a cell's edge. In a sentence it is words.
                                  "The grant will cover the program", "we hope grace helps",
                                  "roe jane", "the cruz rosa line", "garcia rosa"])
def test_other_pairs_of_the_same_words_are_not_a_client(text: str) -> None:
    assert ROSTER_DET.scan_named("", text) == ((), frozenset())


def test_keywords_are_not_turned_around() -> None:
    det = Detectors(PolicySettings(identifier_keywords=("Blue Harbor",)))
    assert det.scan("", "Blue Harbor intake") and not det.scan("", "harbor blue")


def test_a_no_break_space_is_a_plain_space_between_names() -> None:
    """"the grant&nbsp;will" reads as a sentence, not as "Grant, Will"."""
    assert ROSTER_DET.scan_named("", "the grant\xa0will cover it") == ((), frozenset())


def test_surname_first_checks_stay_linear() -> None:
    import time

    text = "the grant will " * 150_000  # 2.2 MB of rejected candidates
    started = time.process_time()
    assert ROSTER_DET.scan_named("", text)[1] == frozenset()
    assert time.process_time() - started < 3.0  # a copy of the text per candidate: ~9 s


@pytest.mark.parametrize("text", [
    "Jane Roe is depressed", "Jane Roe, suicide attempt last year", "Jane Roe: Zoloft 50 mg",
    "Jane Roe MDD, GAD", "Jane Roe chemotherapy", "Jane Roe A1C 7.2", "Jane Roe dementia",
    "Jane Roe alcohol detox", "Jane Roe PHQ-9 score 19", "Jane Roe, autism evaluation"])
def test_what_clinicians_write_is_a_health_signal(text: str) -> None:
    assert {"phi-client-name", "phi-keyword"} <= kinds(body=text)


@pytest.mark.parametrize("date", ["March 14th, 1985", "1985/03/14", "14-Mar-1985", "14 Mar 85",
                                  "3/14/85", "1985-03-14", "Mar. 14, 1985"])
def test_dates_of_birth_as_people_write_them(date: str) -> None:
    assert "phi-dob" in kinds(body=f"DOB {date}")


def test_a_middle_name_written_as_its_initial_is_the_client() -> None:
    det = Detectors(PolicySettings(), name_owners=[("Robert James Van Der Berg Jr.", "c-1")])
    for text in ("Robert J. Van Der Berg Jr.", "VAN DER BERG, ROBERT J", "Robert Van Der Berg"):
        assert det.scan_named("", text)[1] == {"c-1"}, text
    assert det.scan_named("", "Robert K. Van Der Berg")[1] == frozenset()


def test_two_dates_of_birth_or_ssns_are_several_people() -> None:
    assert "phi-several-people" in kinds(body="DOB 03/14/1985 ... DOB: 07/01/1990")
    assert "phi-several-people" in kinds(body="SSN 123-45-6789; spouse 234-56-7890")
    # One person's date written twice, two ways: one person.
    assert "phi-several-people" not in kinds(body="DOB 03/14/1985, born on March 14th, 1985")
    assert "phi-several-people" not in kinds(body="SSN 123-45-6789 (SSN: 123456789)")
    # Two-digit years: the year is the last number.
    assert "phi-several-people" not in kinds(body="DOB 7/3/03; DOB: 07/03/2003")
    assert "phi-several-people" in kinds(body="DOB 7/3/03; DOB: 3/3/07")


@pytest.mark.parametrize("text", [
    "Open enrolment: STD/LTD cover. Born on 03/14/1986 (Jo, HR).",
    "Cookies from Insomnia Cookies for Jo's birthday, born on 03/14/1986"])
def test_benefits_and_bakery_mail_is_not_phi(text: str) -> None:
    assert not is_phi(body=text)


@given(st.lists(st.sampled_from(["Jane", "Roe", "roe,", "DOB", "03/14/1985", "SSN",
                                 "123-45-6789", "diagnosis", "F32.1", "depressed", "the", "grant",
                                 "will", "\t", "\n", "MRN:", "00451234", "therapy", "a1c"]),
                max_size=40))
@settings(max_examples=300, deadline=None)
def test_ascii_text_is_judged_the_same_on_either_automaton(words: list[str]) -> None:
    """ASCII text is scanned as bytes; text with one accented letter as
    characters: the same words give the same hits."""
    text = " ".join(words)
    assert kinds(body=text) == kinds(body=text + " café")


# A table written as text: a PDF's table (cells a space apart, one row a
# line) or a fixed-width table pasted into a message.
CENSUS = ("Waitlist census, November\n"
          "Name DOB Diagnosis Provider\n"
          "Vega, Ana 03/14/1985 F41.1 Dr. Lee\n"
          "Lee, Bo 07/01/1990 F32.1 Dr. Lee\n")


@pytest.mark.parametrize("table", [
    CENSUS,
    "Client        Date of birth   Dx\n------------------------------\n"
    "Ana Vega      1985-03-14      F41.1\nBo Lee        1990-07-01      F32.1\n",
    "Patient\tDOB\tICD-10\n\nAna Vega\tMarch 14th, 1985\tF41.1\nBo Lee\t1 Jul 1990\tF32.1\n",
])
def test_dates_and_codes_under_their_column_headings(table: str) -> None:
    assert {"phi-dob", "phi-icd10", "phi-several-people"} <= kinds(body=table)
    assert is_phi(body=table)


@pytest.mark.parametrize("text", [
    # A form's empty field, then an appointment date: no column, no DOB.
    "Intake form\nPatient name: ______ DOB: ______\nAppointment 12/01/2026\n",
    # Dates under no DOB heading (a schedule); a heading with no rows.
    "Name Date Room\nAna 12/01/2026 4\nBo 12/02/2026 5\n",
    "Name DOB Diagnosis\n(no rows yet)\n\n\nNext meeting 12/01/2026, room F41.1\n",
    # A sentence that names two headings is no heading line.
    "Please send the client's name and DOB to the front desk.\nGroup therapy 12/01/2026\n",
    # One heading word is not a table heading.
    "Dx\nfollow-up list\nroom F41.1\n",
    # Rows end after three lines without a value (blank ones included).
    "Name DOB\nAna\nBo\nCy\nStaff lunch 12/01/2026\n",
])
def test_text_that_is_not_a_table_of_births_or_codes(text: str) -> None:
    assert not {"phi-dob", "phi-icd10"} & kinds(body=text)


def test_a_pdf_table_of_people_not_in_the_directory_is_phi() -> None:
    """Before, "DOB" and the dates were read a line apart and nothing fired:
    a waitlist of strangers' birth dates and diagnoses left in clear."""
    from tests.document_makers import pdf_with_table

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "dr@riverside.example", "x@y.example", "List"
    msg.set_content("As discussed.")
    msg.add_attachment(pdf_with_table([["Name", "DOB", "Diagnosis", "Provider"],
                                       ["Vega, Ana", "03/14/1985", "F41.1", "Dr. Lee"],
                                       ["Lee, Bo", "07/01/1990", "F32.1", "Dr. Lee"]]),
                       maintype="application", subtype="pdf", filename="census.pdf")
    text, cut = message_text(email.message_from_bytes(msg.as_bytes()), 1_000_000)
    assert not cut
    assert {"phi-dob", "phi-icd10", "phi-several-people"} <= kinds(body=text)


@pytest.mark.parametrize(("text", "named"), [
    ("Re jane.roe@mail.example: her anxiety", True),
    ("<JANE.ROE@MAIL.EXAMPLE> anxiety", True),
    ("mailto:jane.roe@mail.example, anxiety.", True),
    ("kim@bücher.example has anxiety", True),
    ("kim@xn--bcher-kva.example has anxiety", True),
    # Inside a longer address, or the same words apart: someone else.
    ("mary.jane.roe@mail.example has anxiety", False),
    ("jane.roe@mail.example.org has anxiety", False),
    ("jane.roe@mail.examples has anxiety", False),
    ("Jane Roe, mail: example of anxiety", False),
])
def test_a_clients_address_names_the_client_only_as_a_whole_address(
        text: str, named: bool) -> None:
    det = Detectors(PolicySettings(), address_owners=[
        ("jane.roe@mail.example", "c-1"), ("kim@xn--bcher-kva.example", "c-2"),
        ("kim@bücher.example", "c-2")])
    signals, clients = det.scan_named("", text)
    assert bool(clients) is named, (text, clients)
    assert ("phi-client-name" in {s.detector for s in signals}) is named


NAMED = Detectors(PolicySettings(), client_names=["Jane Roe", "Will Grant"])


@pytest.mark.parametrize(("text", "named"), [
    # A PDF's table: surname and given name a plain space apart, first in a row.
    ("Name DOB Diagnosis\nRoe Jane 03/14/1985 F41.1\nVega Ana 1/2/1990 F32.1\n", True),
    ("Client        Appointment   Notes\n-----------------------------\n"
     "Grant Will    Tuesday       intake\n", True),
    # Not first in a row, no name heading, or prose: "the grant will".
    ("Name DOB Diagnosis\n1 Roe Jane 03/14/1985 F41.1\n", False),
    ("Date Room\nRoe Jane 12/01\n", False),
    ("Name Topic\nthe grant will cover it\n", False),
    ("Roe Jane see you Tuesday\n", False),
    ("Name DOB\nAna Vega 03/14/1985\n\nRoe Jane came by\n", False),
])
def test_a_surname_first_name_a_plain_space_apart_counts_in_a_table_row_only(
        text: str, named: bool) -> None:
    assert ("phi-client-name" in {s.detector for s in NAMED.scan("", text)}) is named
