"""RFC 8785 JSON canonicalisation: one byte string per document, so evidence verifies anywhere.

Signed statements that leave a node or a coordinator (audit heads, sealed openings,
transcripts bound to policy files) are serialised with `canonical_json`, which any
RFC 8785 implementation reproduces byte for byte. Numbers should be integers (RFC
8785 serialises floats as ECMAScript does; integers beyond 2^53 are refused), bytes
travel as lowercase hex strings.
"""

from __future__ import annotations

from typing import Any

import rfc8785


def canonical_json(document: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 encoding of ``document`` (dict, list, str, int, bool, None)."""
    return rfc8785.dumps(document)
