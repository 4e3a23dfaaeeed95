"""Item 1: case reference and legal basis are bounded before anything is written; the audit
reader handles a line of any length; tables never read data as markup."""

from __future__ import annotations

import datetime as dt
import json

import grpc
import pytest

from fedtrace.errors import ConfigError
from node.audit import AUDIT_DIR, TRAIL_FILE, AuditLog, entries, render_entries, verify_trail
from node.bounds import context_problem
from node.shared import SharedRecord, render_shared
from tests.adversarial.conftest import Target, run_match


def test_a_70000_character_case_reference_is_refused_and_audited_bounded(target: Target) -> None:
    with target.served() as (_, stubs):
        assert run_match(stubs, case_ref="A" * 70_000) == grpc.StatusCode.INVALID_ARGUMENT
        assert run_match(stubs, legal_basis="x" * 70_000) == grpc.StatusCode.INVALID_ARGUMENT
        assert run_match(stubs) == grpc.StatusCode.OK  # the node still answers afterwards
    trail = (target.node_dir / AUDIT_DIR / TRAIL_FILE).read_text().splitlines()
    assert max(len(line) for line in trail) < 5_000  # never the raw value
    refused = [
        e for e in entries(target.node_dir / AUDIT_DIR) if e.get("code") == "INVALID_ARGUMENT"
    ]
    assert refused[0]["case_ref"].startswith("<malformed: 70000 chars, sha256 ")
    assert refused[1]["legal_basis"].startswith("<malformed: 70000 chars")
    assert verify_trail(target.node_dir / AUDIT_DIR).ok
    target.state()  # the node starts again


@pytest.mark.parametrize(
    ("case_ref", "legal_basis", "bad"),
    [
        ("C-2026/17.a_b", "MLA", False),
        ("", "", False),  # where the policy allows it, both may be absent
        ("C" * 64, "L" * 32, False),
        ("C" * 65, "MLA", True),
        ("C 1", "MLA", True),
        ("[/]", "MLA", True),
        ("C-1", "L" * 33, True),
        ("C-1", "MLA/1", True),
        ("C-1\n", "MLA", True),
    ],
)
def test_the_formats_of_case_reference_and_legal_basis(
    case_ref: str, legal_basis: str, bad: bool
) -> None:
    assert bool(context_problem(case_ref, legal_basis)) is bad


def test_a_legal_basis_is_compared_upper_cased(target: Target) -> None:
    target.write_policy(
        'jurisdiction = "EE"\nversion = "v"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
        'legal_bases = ["MLA"]\n'
    )
    with target.served() as (_, stubs):
        assert run_match(stubs, legal_basis="mla") == grpc.StatusCode.OK
    answered = [e for e in entries(target.node_dir / AUDIT_DIR) if e.get("outcome") == "answered"]
    assert answered[-1]["legal_basis"] == "MLA"


def test_the_audit_reader_handles_a_line_of_any_length(target: Target) -> None:
    config = target.config
    log = AuditLog(
        target.node_dir / AUDIT_DIR, config.tls.key.read_bytes(), config.tls.cert.read_bytes()
    )
    log.append("query", {"reason": "x" * 300_000})  # longer than any one read of the tail
    log.append("query", {"reason": "after"})
    log.append("query", {"reason": "y" * 200_000})
    log.check()
    assert verify_trail(target.node_dir / AUDIT_DIR).ok
    target.state()  # `node serve` starts on it


def test_a_trail_the_node_cannot_extend_stops_the_start_with_one_line(target: Target) -> None:
    target.state()
    trail = target.node_dir / AUDIT_DIR / TRAIL_FILE
    with trail.open("a") as handle:
        handle.write("not an entry\n")
    with pytest.raises(ConfigError) as caught:
        target.state()
    assert "\n" not in str(caught.value) and "audit" in str(caught.value)
    assert not verify_trail(target.node_dir / AUDIT_DIR).ok


def test_tables_show_markup_in_data_as_text(target: Target) -> None:
    config = target.config
    log = AuditLog(
        target.node_dir / AUDIT_DIR, config.tls.key.read_bytes(), config.tls.cert.read_bytes()
    )
    log.append("query", {"case_ref": "[/]", "reason": "[bold red]x[/bold red] [link=http://e]"})
    table = render_entries(entries(target.node_dir / AUDIT_DIR), "table")
    assert "[/]" in table and "[bold red]x[/bold red]" in table
    record = SharedRecord(
        record="[/]",
        shared_with=("[b]FR",),
        dataset="wallets",
        overlap_id="o",
        investigator="FR",
        recorded=dt.datetime.now(dt.UTC),
    )
    shown = render_shared([record], "table", jurisdiction="EE", case_ref="[/]")
    assert "[b]FR" in shown
    assert json.loads(render_entries(entries(target.node_dir / AUDIT_DIR), "json"))
