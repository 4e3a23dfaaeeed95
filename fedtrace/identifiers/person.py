"""Person keys: normalised name plus date of birth, a phonetic variant, a document.

Name normalisation, in order: Unicode NFKC; case folding; the Greek digraph
"ου" becomes "ou" (ELOT 743) before transliteration; transliteration to ASCII
with ``anyascii`` (so ü becomes u, not ue; ß becomes ss); whitespace, hyphens,
commas, periods, slashes, semicolons, colons, underscores and brackets become
token separators; every other non-alphanumeric character (apostrophes,
quotes, …) is dropped; tokens are sorted. "MÜLLER, Hans-Peter" and
"hans peter muller" therefore both give "hans muller peter".

Key types:

* ``name_dob``: sorted tokens joined by one space, ``|``, ISO date of birth.
* ``phonetic_dob``: the Metaphone code (``jellyfish.metaphone``) of each token,
  sorted, joined by one space, ``|``, ISO date. Sorting the codes rather than
  the spellings keeps "Katherine Jones" and "Catherine Jones" aligned.
* ``document``: the document number upper case, spaces, dashes and dots
  removed (only when one is given).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from dataclasses import dataclass

import jellyfish
from anyascii import anyascii

from fedtrace.identifiers.dates import normalize_date
from fedtrace.identifiers.errors import InvalidIdentifier

PERSON_KEY_TYPES = ("name_dob", "phonetic_dob", "document")

_GREEK_OU = re.compile("[οό][υύ]")
_SEPARATORS = re.compile(r"[\s\-,.;:/\\_()\[\]{}]+")
_DROPPED = re.compile(r"[^a-z0-9 ]")
_DOCUMENT_NOISE = re.compile(r"[\s\-.]+")
_DOCUMENT_CHARS = re.compile(r"[A-Z0-9]+")


@dataclass(frozen=True)
class PersonKey:
    """One matchable key of a person; ``str(key)`` is what gets hashed."""

    type: str
    value: str

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


def name_tokens(full_name: str) -> tuple[str, ...]:
    """Normalised, sorted name tokens of ``full_name`` (may be empty)."""
    text = unicodedata.normalize("NFKC", full_name).casefold()
    text = _GREEK_OU.sub("ou", text)
    text = anyascii(text).casefold()
    text = _SEPARATORS.sub(" ", text)
    text = _DROPPED.sub("", text)
    return tuple(sorted(text.split()))


def phonetic_code(tokens: tuple[str, ...]) -> str:
    """Metaphone codes of ``tokens``, sorted and joined by one space."""
    codes = (jellyfish.metaphone(token) for token in tokens)
    return " ".join(sorted(code for code in codes if code))


def normalize_document(document_number: str) -> str:
    """Document number upper case with spaces, dashes and dots removed."""
    compact = _DOCUMENT_NOISE.sub("", unicodedata.normalize("NFKC", document_number)).upper()
    if not _DOCUMENT_CHARS.fullmatch(compact):
        raise InvalidIdentifier(document_number, "document number must be letters and digits only")
    return compact


def person_keys(
    full_name: str, date_of_birth: str, document_number: str | None = None
) -> tuple[PersonKey, ...]:
    """All keys of one person, in the order name_dob, phonetic_dob[, document]."""
    if not full_name or not full_name.strip():
        raise InvalidIdentifier(full_name, "empty name")
    tokens = name_tokens(full_name)
    if not tokens:
        raise InvalidIdentifier(full_name, "name has no letters or digits after normalisation")
    if not date_of_birth or not date_of_birth.strip():
        raise InvalidIdentifier(date_of_birth, "empty date of birth")
    iso = normalize_date(date_of_birth)
    if dt.date.fromisoformat(iso) > dt.date.today():
        raise InvalidIdentifier(date_of_birth, "date of birth is in the future")
    keys = [PersonKey("name_dob", f"{' '.join(tokens)}|{iso}")]
    phonetic = phonetic_code(tokens)
    if phonetic:
        keys.append(PersonKey("phonetic_dob", f"{phonetic}|{iso}"))
    if document_number is not None and document_number.strip():
        keys.append(PersonKey("document", normalize_document(document_number)))
    return tuple(keys)


def parse_person(value: str) -> tuple[PersonKey, ...]:
    """Keys of a person written as ``FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]``."""
    parts = value.split("|")
    if len(parts) not in (2, 3):
        raise InvalidIdentifier(value, "expected FULL NAME|DATE OF BIRTH[|DOCUMENT NUMBER]")
    return person_keys(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
