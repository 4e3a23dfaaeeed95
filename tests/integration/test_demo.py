"""`fedtrace demo` (what scripts/demo runs) works end to end and shows every query kind."""

from __future__ import annotations

import re

import pytest

from .conftest import fedtrace

pytestmark = pytest.mark.slow


def test_demo_runs_match_aggregate_and_overlap_then_stops() -> None:
    done = fedtrace("demo", timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert re.search(r"EE\s+ok\s+membership\s+\d+", out)
    assert re.search(r"SG\s+ok\s+cardinality\s+\d+", out)
    assert re.search(r"TOTAL\s+ok\s+\d+ ± \d+", out)
    # The planted network: 34 wallets in two jurisdictions, 26 in all three.
    groups = {
        name: int(count) for name, count in re.findall(r"(\w\w(?: \+ \w\w)+)\s+(\d+)[ ]*\n", out)
    }
    assert groups["EE + FR + SG"] == 26
    assert groups["EE + FR"] + groups["EE + SG"] + groups["FR + SG"] == 34
    assert "own record(s) shared" in out and "nodes stopped" in out
    assert "Traceback" not in done.stderr
