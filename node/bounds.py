"""What a request may carry before the node writes anything about it, and how a refused value
is recorded.

A case reference is 1–64 characters of ``[A-Za-z0-9._/-]``; a legal basis 1–32
characters of ``[A-Za-z0-9._-]``, compared upper-cased (``mla`` is ``MLA``). Either
may be empty where the policy allows it (`require_case = false`, no
`legal_bases`). Anything else is refused with INVALID_ARGUMENT before the policy
is consulted, and the audit trail records it only in bounded form: its length,
its SHA-256 and a short printable prefix, never the raw value (a 70,000-character
case reference, or one carrying terminal or table markup).
"""

from __future__ import annotations

import hashlib
import re

from fedtrace.wire import CASE_REF, CASE_REF_MAX, LEGAL_BASIS, LEGAL_BASIS_MAX

DATASET_MAX = 63
NONCE_HEX_MAX = 128  # 64 bytes; the replay guard wants 16
REASON_MAX = 400  # characters of a refusal's reason kept in the audit trail

DATASET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
NONCE_HEX = re.compile(r"^[0-9a-f]{0,128}$")
_PRINTABLE = re.compile(r"[^A-Za-z0-9._/-]")
_PREFIX = 16


def bounded(value: str, pattern: re.Pattern[str]) -> str:
    """`value` itself when it has the expected form, else a bounded description of it."""
    if not value or pattern.fullmatch(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "replace")).hexdigest()[:16]
    prefix = _PRINTABLE.sub("?", value[:_PREFIX])
    return f"<malformed: {len(value)} chars, sha256 {digest}…, starts {prefix!r}>"


def bounded_reason(reason: str) -> str:
    """A refusal's reason as the audit trail keeps it: at most REASON_MAX characters."""
    if len(reason) <= REASON_MAX:
        return reason
    return reason[: REASON_MAX - 1] + "…"


def context_problem(case_ref: str, legal_basis: str) -> str:
    """Why a QueryContext's case reference or legal basis is malformed; "" when both are fine."""
    if case_ref and not CASE_REF.fullmatch(case_ref):
        return (
            f"the case reference must be 1–{CASE_REF_MAX} characters of letters, digits and "
            f". _ / - (got {bounded(case_ref, CASE_REF)})"
        )
    if legal_basis and not LEGAL_BASIS.fullmatch(legal_basis):
        return (
            f"the legal basis must be 1–{LEGAL_BASIS_MAX} characters of letters, digits and "
            f". _ - (got {bounded(legal_basis, LEGAL_BASIS)})"
        )
    return ""


def legal_basis_code(legal_basis: str) -> str:
    """The legal basis as policies name it: upper-cased."""
    return legal_basis.upper()
