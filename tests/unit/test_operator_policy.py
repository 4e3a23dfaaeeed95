"""The officer's policy tools: a diff key by key in plain words, check finds the node, partners."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.pki import init_ca
from node.policy import load_policy
from node.policy.diff import diff
from node.setup import init_node

AGGREGATE = """jurisdiction = "EE"
version = "{version}"

[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 1000
aggregate_columns = [{columns}]
clip = {{ {clip} }}
min_cohort = {cohort}
epsilon_per_query = {epsilon}
epsilon_budget = {{ epsilon = {budget}, per = "30d" }}
epsilon_lifetime = 500.0
total_only = {total_only}
legal_bases = [{bases}]
"""


def _policy(tmp_path: Path, name: str, **values: object) -> Path:
    fields: dict[str, object] = dict(
        version="v1",
        columns='"total_in_eur"',
        clip="total_in_eur = [0, 1000]",
        cohort=5,
        epsilon=1.0,
        budget=10.0,
        total_only="true",
        bases='"MLA", "EGMONT"',
    )
    fields.update(values)
    path = tmp_path / name
    path.write_text(AGGREGATE.format(**fields))
    return path


def test_diff_compares_every_key_and_says_which_widen(tmp_path: Path) -> None:
    old = _policy(tmp_path, "old.toml")
    new = _policy(
        tmp_path,
        "new.toml",
        version="v2",
        columns='"total_in_eur", "tx_count"',
        clip="total_in_eur = [0, 5000], tx_count = [0, 100]",
        cohort=2,
        epsilon=5.0,
        budget=20.0,
        total_only="false",
        bases='"MLA"',
    )
    text = diff(load_policy(old), load_policy(new))
    lines = text.splitlines()
    assert (
        "  FR wallets aggregate: epsilon_per_query: 1.0 → 5.0 (looser: widens access, 5× more "
        "privacy-loss budget (epsilon) per query: less noise in each answer)"
    ) in lines
    assert (
        "  FR wallets aggregate: epsilon_budget: 10 per 30d → 20 per 30d (looser: widens access, "
        "2× more privacy-loss budget (epsilon) per unit of time)"
    ) in lines
    assert (
        "  FR wallets aggregate: aggregate_columns: total_in_eur → total_in_eur, tx_count "
        "(looser: widens access, adds tx_count)"
    ) in lines
    assert (
        "  FR wallets aggregate: min_cohort: 5 → 2 (looser: widens access, smaller cohorts are "
        "answered, down to 2)"
    ) in lines
    assert (
        "  FR wallets aggregate: total_only: yes → no (looser: widens access, this node's own "
        "figure, not only the total)"
    ) in lines
    assert (
        "  FR wallets aggregate: legal_bases: EGMONT, MLA → MLA (tighter: narrows access, "
        "removes EGMONT)"
    ) in lines
    assert (
        "  FR wallets aggregate: clip: total_in_eur [0, 1,000] → total_in_eur [0, 5,000], "
        "tx_count [0, 100] (changes)"
    ) in lines
    assert lines[-1] == "5 change(s) widen access: review them before deploying."


def test_diff_of_a_file_with_itself_changes_nothing(tmp_path: Path) -> None:
    path = _policy(tmp_path, "same.toml")
    assert diff(load_policy(path), load_policy(path)).endswith("No partner's access changes.\n")


def test_check_finds_the_node_for_a_draft_in_the_node_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    draft = tmp_path / "EE" / "policy-next.toml"
    draft.write_text(
        'jurisdiction = "EE"\nversion = "d"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["walets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
    )
    assert main(["policy", "check", str(draft)]) == 1
    captured = capsys.readouterr()
    assert "dataset 'walets' is not defined in" in captured.out
    assert f"checked against {tmp_path / 'EE' / 'node.toml'}\n" in captured.err


def test_check_finds_the_node_directory_next_to_a_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    init_node(tmp_path / "FR", "FR", tmp_path / "ca", "127.0.0.1:0")
    beside = tmp_path / "EE-next.toml"
    beside.write_text(
        'jurisdiction = "EE"\nversion = "d"\n[[grant]]\npartners = ["FR"]\n'
        'datasets = ["walets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
    )
    assert main(["policy", "check", str(beside)]) == 1
    captured = capsys.readouterr()
    assert '(did you mean "wallets"?)' in captured.out
    assert f"checked against {tmp_path / 'EE' / 'node.toml'}\n" in captured.err


MEMBERSHIP = (
    'jurisdiction = "EE"\nversion = "m"\n[[grant]]\npartners = ["FR", "SG"]\n'
    'datasets = ["wallets"]\ndisclosure = "membership"\nmax_items_per_query = 10\n'
)


def test_explain_takes_a_partner_in_any_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(MEMBERSHIP)
    assert main(["policy", "explain", str(path), "--partner", "fr"]) == 0
    captured = capsys.readouterr()
    assert "what FR may learn" in captured.out and captured.err == ""


def test_explain_suggests_known_partners_when_none_matches(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "p.toml"
    path.write_text(MEMBERSHIP)
    assert main(["policy", "explain", str(path), "--partner", "fx"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "note: no grant names partner 'FX' (did you mean FR?); partners named: FR, SG\n"
    )
    assert "Nothing: no grant names FX" in captured.out


SHADOWED = """jurisdiction = "EE"
version = "{version}"

[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 1000

[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 100
rate_limit = {{ queries = {queries}, per = "day" }}
"""


def test_diff_names_a_change_to_a_shadowed_grant(tmp_path: Path) -> None:
    old, new = tmp_path / "old.toml", tmp_path / "new.toml"
    old.write_text(SHADOWED.format(version="v1", queries=5))
    new.write_text(SHADOWED.format(version="v2", queries=50))
    text = diff(load_policy(old), load_policy(new))
    assert (
        "  grant #2 → #2 (FR · wallets · cardinality): rate_limit 5 per day → 50 per day"
    ) in text.splitlines()
