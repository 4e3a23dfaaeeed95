"""Checking the audit trail against signed heads that partners hold (`audit verify --heads`).

Every answer a node gives carries a signed head: how many entries its trail held
and the chain hash of the last one (`fedtrace.audit_head`). Partners keep them
(`fedtrace audit heads` writes HEADS.json). A trail that still holds every head it
ever signed has at least that many entries, and its entry number ``entries`` has
exactly that chain hash. A node directory restored from an older copy, a trail
cut short, rewritten or wiped fails that test even when the trail is consistent
in itself (its own signed head and the database's high-water mark restored too).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.audit_head import SignedHead
from fedtrace.pki import ROLE_NODE, InvalidCertificate, PkiError, verify_issued_by
from node.audit.chain import SIGNERS_DIR, certificate_fingerprint, entry_hash, read_trail_torn


@dataclass(frozen=True)
class HeldHead:
    """A head from HEADS.json with the certificate the partner kept beside it."""

    head: SignedHead
    certificate_pem: bytes

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> HeldHead:
        pem = document.get("certificate_pem")
        if not isinstance(pem, str):
            raise ValueError("a held head lacks its certificate_pem")
        return cls(SignedHead.from_dict(document), pem.encode())


@dataclass(frozen=True)
class HeadsCheck:
    """What the trail says about the heads that name this node."""

    covered: int  # heads the trail holds
    problems: tuple[str, ...]  # one per head the trail does not hold
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def load_held_heads(path: Path) -> list[HeldHead]:
    """The heads in a HEADS.json file (ValueError naming what is wrong)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the heads file: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: not a heads file: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("heads"), list):
        raise ValueError(f'{path}: not a heads file (no "heads" list)')
    held = []
    for number, entry in enumerate(document["heads"], 1):
        try:
            held.append(HeldHead.from_dict(entry))
        except ValueError as exc:
            raise ValueError(f"{path}: head {number}: {exc}") from None
    return held


def _signed_by_node(
    held: HeldHead, directory: Path, jurisdiction: str, ca_pem: bytes | None
) -> str:
    """Why `held` is not this node's signed head ("" when it is)."""
    try:
        fingerprint = certificate_fingerprint(held.certificate_pem)
    except ValueError:
        return "its certificate does not parse"
    own = (directory / SIGNERS_DIR / f"{fingerprint}.pem").exists()
    if not own:
        if ca_pem is None:
            return "its certificate is not one this node signed its trail with"
        try:
            identity = verify_issued_by(held.certificate_pem, ca_pem, at=held.head.signed_at)
        except (InvalidCertificate, PkiError) as exc:
            return f"its certificate does not chain to the federation CA: {exc}"
        if identity.role != ROLE_NODE or identity.jurisdiction != jurisdiction:
            return f"its certificate is {identity.describe()}'s, not node {jurisdiction}'s"
    if not held.head.verifies(held.certificate_pem):
        return "its signature does not verify with its certificate"
    return ""


def _chain_hashes(directory: Path) -> list[str]:
    """Each whole line's chain hash as recomputed from its content, in order ("" for a line
    that is not an entry): an entry edited without its hash differs as much as one re-signed."""
    lines, _, torn = read_trail_torn(directory)
    if torn and lines:
        lines.pop()  # a torn write is not an entry
    hashes = []
    for text in lines:
        try:
            entry = json.loads(text)
        except ValueError:
            entry = None
        hashes.append(entry_hash(entry) if isinstance(entry, dict) else "")
    return hashes


def check_heads(
    directory: Path,
    held: Sequence[HeldHead],
    *,
    jurisdiction: str,
    ca_pem: bytes | None = None,
) -> HeadsCheck:
    """Whether the trail in `directory` holds every head of `jurisdiction` in `held`."""
    mine = [h for h in held if h.head.jurisdiction == jurisdiction]
    notes: list[str] = []
    if not mine:
        notes.append(f"the heads file holds no head of node {jurisdiction}")
    hashes = _chain_hashes(directory)
    problems: list[str] = []
    covered = 0
    for one in sorted(mine, key=lambda h: (h.head.entries, h.head.timestamp_unix_ms)):
        head = one.head
        why = _signed_by_node(one, directory, jurisdiction, ca_pem)
        if why:
            notes.append(f"{head.describe()} is not evidence ({why}); ignored")
            continue
        if len(hashes) < head.entries:
            problems.append(
                "trail rolled back or truncated behind a signed head held by a partner: "
                f"{head.describe()}, trail has {len(hashes)} entries"
            )
        elif head.entries and hashes[head.entries - 1] != head.head_sha256.hex():
            problems.append(
                "trail rewritten behind a signed head held by a partner: "
                f"{head.describe()}, the trail differs at entry {head.entries}"
            )
        else:
            covered += 1
    return HeadsCheck(covered, tuple(problems), tuple(notes))
