"""Disclosure policies: the privacy officer's file, parsed strictly, and the decision per request.

- `node.policy.model`: the frozen values (Policy, Grant, Period, QueryKind, …);
- `node.policy.parse`: reading a file with the position of every problem;
- `node.policy.grants`: reading one `[[grant]]` table;
- `node.policy.source`: positions in a TOML source (SourceMap, Diagnostic);
- `node.policy.decide`: the decision on one request;
- `node.policy.explain` and `node.policy.check`: the officer's `policy explain|diff|check`.

The names most callers need are re-exported here.
"""

from __future__ import annotations

from node.policy.decide import Decision, RequestFacts, decide, decide_match
from node.policy.model import Grant, Period, Policy, QueryKind, utc_now
from node.policy.parse import (
    Diagnostic,
    KeyPath,
    PolicyParse,
    SourceMap,
    deny_all_policy_text,
    load_policy,
    parse_policy,
    read_policy,
)

__all__ = [
    "Decision",
    "Diagnostic",
    "Grant",
    "KeyPath",
    "Period",
    "Policy",
    "PolicyParse",
    "QueryKind",
    "RequestFacts",
    "SourceMap",
    "decide",
    "decide_match",
    "deny_all_policy_text",
    "load_policy",
    "parse_policy",
    "read_policy",
    "utc_now",
]
