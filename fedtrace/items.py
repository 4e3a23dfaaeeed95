"""The bytes that get hashed to the group: one canonical identifier, domain-separated by kind.

Both sides must produce identical bytes for the same identifier, so this is the
only place that decides the encoding.
"""

from __future__ import annotations

ITEM_PREFIX = b"fedtrace:v1:"


def item_bytes(kind: str, canonical: str) -> bytes:
    """`kind` is the dataset kind ("wallet" or "person"); `canonical` an identifier or key."""
    return ITEM_PREFIX + kind.encode("ascii") + b":" + canonical.encode("utf-8")
