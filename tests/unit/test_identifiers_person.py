"""Person keys across scripts, and date-of-birth parsing."""

from __future__ import annotations

import pytest

from fedtrace.identifiers import (
    InvalidIdentifier,
    PersonKey,
    normalize_date,
    parse_person,
    person_keys,
)

ISO_HINT = "write it as YYYY-MM-DD"


def _keys(name: str, dob: str = "1980-12-31") -> dict[str, str]:
    return {key.type: key.value for key in person_keys(name, dob)}


def test_person_key_string_form() -> None:
    key = PersonKey("document", "C01X00T47")
    assert str(key) == "document:C01X00T47"


def test_the_issue_example_agrees_on_every_key() -> None:
    assert (
        _keys("MÜLLER, Hans-Peter")
        == _keys("hans peter muller")
        == {
            "name_dob": "hans muller peter|1980-12-31",
            "phonetic_dob": "HNS MLR PTR|1980-12-31",
        }
    )


def test_keys_with_document() -> None:
    keys = person_keys("Jean Dupont", "31.12.1980", " ab-12.345 67 ")
    assert [str(k) for k in keys] == [
        "name_dob:dupont jean|1980-12-31",
        "phonetic_dob:JN TPNT|1980-12-31",
        "document:AB1234567",
    ]
    assert parse_person("Jean Dupont|31.12.1980|ab-12.345 67") == keys
    assert parse_person("Jean Dupont|1980-12-31") == keys[:2]


@pytest.mark.parametrize(
    ("left", "right", "shared"),
    [
        # Umlaut: ü -> u (anyascii), so Müller == Muller; "Mueller" only phonetically.
        ("Hans Müller", "Hans Muller", {"name_dob", "phonetic_dob"}),
        ("Hans Müller", "Hans Mueller", {"phonetic_dob"}),
        # Cyrillic: й -> y, so "Sergey" matches exactly, "Sergei" phonetically.
        ("Сергей Иванов", "Sergey Ivanov", {"name_dob", "phonetic_dob"}),
        ("Сергей Иванов", "Sergei Ivanov", {"phonetic_dob"}),
        ("ИВАНОВ Сергей", "ivanov sergey", {"name_dob", "phonetic_dob"}),
        # Greek: ου -> ou before transliteration.
        ("Γιώργος Παπαδόπουλος", "Giorgos Papadopoulos", {"name_dob", "phonetic_dob"}),
        ("ΠΑΠΑΔΟΠΟΥΛΟΣ Γιώργος", "Giorgos Papadopoulos", {"name_dob", "phonetic_dob"}),
        # Arabic is written without short vowels: only the phonetic key can meet.
        ("محمد", "Mohammed", {"phonetic_dob"}),
        # Accented Latin, ligatures, width forms, ß.
        ("François Lefèvre", "FRANCOIS LEFEVRE", {"name_dob", "phonetic_dob"}),
        ("Łukasz Wałęsa", "Lukasz Walesa", {"name_dob", "phonetic_dob"}),
        ("Jørgen Ødegård", "Jorgen Odegard", {"name_dob", "phonetic_dob"}),
        ("Nguyễn Văn Anh", "Anh Van Nguyen", {"name_dob", "phonetic_dob"}),
        ("Ｊｏｈｎ Ｓｍｉｔｈ", "John Smith", {"name_dob", "phonetic_dob"}),
        ("Straße", "Strasse", {"name_dob", "phonetic_dob"}),
        # Punctuation: apostrophes dropped, periods and hyphens separate.
        ("Seán O'Brien", "Sean OBrien", {"name_dob", "phonetic_dob"}),
        ("J.R. Smith", "J R Smith", {"name_dob", "phonetic_dob"}),
        ("Anne-Marie Dupont", "Dupont, Anne Marie", {"name_dob", "phonetic_dob"}),
        # Phonetic codes are sorted, so spelling variants do not reorder tokens.
        ("Katherine Jones", "Catherine Jones", {"phonetic_dob"}),
    ],
)
def test_names_across_scripts(left: str, right: str, shared: set[str]) -> None:
    a, b = _keys(left), _keys(right)
    assert {kind for kind in a if a[kind] == b.get(kind)} == shared


def test_different_people_do_not_match() -> None:
    a, b = _keys("Hans Müller"), _keys("Peter Schmidt")
    assert not set(a.values()) & set(b.values())
    assert _keys("Hans Müller", "1980-12-30") != _keys("Hans Müller")


@pytest.mark.parametrize(
    ("name", "dob", "document", "reason"),
    [
        ("", "1980-01-01", None, "empty name"),
        ("   ", "1980-01-01", None, "empty name"),
        ("-- ,", "1980-01-01", None, "name has no letters or digits after normalisation"),
        ("Hans Müller", "", None, "empty date of birth"),
        ("Hans Müller", "2999-01-01", None, "date of birth is in the future"),
        ("Hans Müller", "1980-01-01", "AB#12", "document number must be letters and digits only"),
        (
            "Hans Müller",
            "03/04/1980",
            None,
            "ambiguous date '03/04/1980' (1980-04-03 or 1980-03-04): write it as YYYY-MM-DD",
        ),
    ],
)
def test_person_rejections(name: str, dob: str, document: str | None, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        person_keys(name, dob, document)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("Hans Müller", "expected FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]"),
        ("a|b|c|d", "expected FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]"),
        ("Hans Müller|yesterday", "unparseable date 'yesterday'"),
    ],
)
def test_parse_person_rejections(value: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        parse_person(value)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("1980-12-31", "1980-12-31"),
        ("1980-1-5", "1980-01-05"),
        ("19801231", "1980-12-31"),
        ("1980/12/31", "1980-12-31"),
        ("1980.12.31", "1980-12-31"),
        ("31.12.1980", "1980-12-31"),
        ("31/12/1980", "1980-12-31"),
        ("31-12-1980", "1980-12-31"),
        ("12/31/1980", "1980-12-31"),
        ("05/05/1980", "1980-05-05"),
        ("5 Mar 1980", "1980-03-05"),
        ("5 March 1980", "1980-03-05"),
        ("05-MAR-1980", "1980-03-05"),
        ("5th of March 1980".replace(" of", ""), "1980-03-05"),
        ("March 5, 1980", "1980-03-05"),
        ("Sept. 9, 1975", "1975-09-09"),
        ("  29.02.1984 ", "1984-02-29"),
    ],
)
def test_normalize_date(text: str, iso: str) -> None:
    assert normalize_date(text) == iso


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("03/04/1980", f"ambiguous date '03/04/1980' (1980-04-03 or 1980-03-04): {ISO_HINT}"),
        ("1.2.1980", f"ambiguous date '1.2.1980' (1980-02-01 or 1980-01-02): {ISO_HINT}"),
        ("31/12/80", "two-digit year in '31/12/80': write it as YYYY-MM-DD"),
        ("29.02.1981", "invalid date '29.02.1981': day is out of range for month"),
        ("1980-13-01", "invalid date '1980-13-01': month must be in 1..12"),
        ("31/13/1980", "invalid date '31/13/1980': no month field"),
        ("5 Brumaire 1980", "unknown month name 'brumaire'"),
        ("the eighties", "unparseable date 'the eighties'"),
        ("", "empty date"),
    ],
)  # fmt: skip
def test_normalize_date_rejections(text: str, reason: str) -> None:
    with pytest.raises(InvalidIdentifier) as caught:
        normalize_date(text)
    assert caught.value.reason == reason
    assert caught.value.value == text
