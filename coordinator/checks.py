"""What a query's arguments must look like before any node is asked: case, legal basis, dataset.

A case reference is 1–64 characters of ``[A-Za-z0-9._/-]`` (no whitespace), the
same rule every node enforces on the QueryContext it receives. A legal basis is
trimmed and upper-cased (``" mla "`` is ``MLA``) and must be one of the known codes
(`KNOWN_LEGAL_BASES`, extended by FED.toml ``[investigator] legal_bases``). A
dataset must be one the federation's nodes announced (coordinator.catalogue).
Each failure is a `QueryUsageError`: one line, exit status 2, nothing sent.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence

from fedtrace.errors import ConfigError, FedtraceError
from fedtrace.wire import CASE_REF, CASE_REF_MAX, LEGAL_BASIS, LEGAL_BASIS_MAX

# Legal bases every investigator may name; FED.toml `[investigator] legal_bases` adds more.
KNOWN_LEGAL_BASES = (
    "MLA",  # a mutual legal assistance request
    "EIO",  # a European Investigation Order
    "JIT",  # a joint investigation team agreement
    "FIU-EXCHANGE",  # financial intelligence unit to unit
    "EGMONT",  # FIU exchange under the Egmont Group principles
    "COURT-ORDER",  # a domestic court order
    "TREATY",  # a bilateral or multilateral treaty
    "BUDAPEST-ART25",  # Budapest Convention, article 25 mutual assistance
)


class QueryUsageError(FedtraceError):
    """A query argument that no node would accept, found before anything was sent."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or "" when none is close."""
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_case(case: str) -> str:
    """The case reference, or QueryUsageError saying what one looks like."""
    if CASE_REF.fullmatch(case):
        return case
    if not case:
        problem = "is empty"
    elif len(case) > CASE_REF_MAX:
        problem = f"is {len(case)} characters long"
    else:
        bad = sorted({c for c in case if not re.match(r"[A-Za-z0-9._/-]", c)})
        problem = "contains " + " ".join(repr(c) for c in bad)
    shown = case if len(case) <= 40 else case[:37] + "…"
    raise QueryUsageError(
        f"case reference {shown!r} {problem}; use 1–{CASE_REF_MAX} characters of "
        "letters, digits and . _ / - (no spaces)"
    )


def legal_basis_code(text: str, extra: Sequence[str] = ()) -> str:
    """The legal basis trimmed and upper-cased, "" for none, or QueryUsageError if unknown."""
    code = text.strip().upper()
    if not code:
        return ""
    known = tuple(dict.fromkeys((*KNOWN_LEGAL_BASES, *(e.strip().upper() for e in extra))))
    if code in known:
        return code
    raise QueryUsageError(
        f"unknown legal basis {code!r}; known: {', '.join(known)}{did_you_mean(code, known)} "
        "(add a code to FED.toml [investigator] legal_bases)"
    )


def check_legal_bases(codes: Sequence[str], where: str) -> tuple[str, ...]:
    """FED.toml's extra legal-basis codes, upper-cased; ConfigError naming a malformed one."""
    out = []
    for code in codes:
        normal = code.strip().upper()
        if not LEGAL_BASIS.fullmatch(normal):
            raise ConfigError(
                f"{where}: legal basis {code!r} must be 1–{LEGAL_BASIS_MAX} letters, digits "
                "and . _ -"
            )
        out.append(normal)
    return tuple(out)


def check_dataset(dataset: str, offered: Sequence[str]) -> str:
    """The dataset when some node offers it, or QueryUsageError listing what they offer."""
    if dataset in offered:
        return dataset
    names = sorted(set(offered))
    raise QueryUsageError(
        f"unknown dataset {dataset!r}; the federation's nodes offer: "
        f"{', '.join(names) or 'none'}{did_you_mean(dataset, names)}"
    )
