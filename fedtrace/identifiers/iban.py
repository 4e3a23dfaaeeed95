"""International Bank Account Numbers (ISO 13616).

Spaces are accepted (paper format) and removed; letters may be any case. The
country code must be in the IBAN registry (as shipped with ``schwifty``), the
length must be the one registered for that country, the BBAN must match the
country's registered structure, and the ISO 7064 mod-97 check must give 1.
Canonical form: compact, upper case.
"""

from __future__ import annotations

from schwifty.exceptions import InvalidCountryCode
from schwifty.registry import get_iban_spec

from fedtrace.identifiers.errors import InvalidIdentifier

_ALNUM = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def mod97(compact: str) -> int:
    """ISO 7064 MOD 97-10 remainder of an IBAN (rearranged, letters as numbers)."""
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97


def canonical_iban(value: str) -> str:
    """Validate an IBAN and return it compact and upper case."""
    if not isinstance(value, str):
        raise InvalidIdentifier(repr(value), "not a string")
    compact = value.strip().replace(" ", "").upper()
    if not compact:
        raise InvalidIdentifier(value, "empty value")
    for ch in compact:
        if ch not in _ALNUM:
            raise InvalidIdentifier(value, f"invalid character {ch!r} in IBAN")
    country = compact[:2]
    if len(compact) < 5 or not country.isalpha() or not compact[2:4].isdigit():
        raise InvalidIdentifier(value, "IBAN must start with a country code and two check digits")
    try:
        spec = get_iban_spec(country)
    except InvalidCountryCode:
        raise InvalidIdentifier(value, f"unknown IBAN country code {country!r}") from None
    if len(compact) != spec.iban_length:
        raise InvalidIdentifier(
            value,
            f"IBAN for {country} must be {spec.iban_length} characters, got {len(compact)}",
        )
    if not spec.regex.match(compact[4:]):
        raise InvalidIdentifier(value, f"account part does not match the IBAN format for {country}")
    if mod97(compact) != 1:
        raise InvalidIdentifier(value, "IBAN checksum (mod 97) mismatch")
    return compact
