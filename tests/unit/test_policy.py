"""Disclosure policies: the schema, positions of every problem, the decision, explain and diff."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.errors import ConfigError
from fedtrace.wire import Level
from node.policy import (
    Period,
    QueryKind,
    RequestFacts,
    SourceMap,
    decide,
    decide_match,
    load_policy,
    parse_policy,
    read_policy,
)
from node.policy.check import check_policies
from node.policy.diff import diff
from node.policy.explain import explain
from node.setup import init_node

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "policies"
POLICIES = Path(__file__).resolve().parent.parent.parent / "policies"
EXPECT = re.compile(r"^# expect: (error|warning) (\d+):(\d+) (.+)$")
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def _expectation(path: Path) -> tuple[str, int, int, str] | None:
    first = path.read_text().splitlines()[0]
    if first == "# expect: clean":
        return None
    match = EXPECT.match(first)
    assert match, f"{path} must start with '# expect: …'"
    return match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)


FIXTURE_FILES = sorted(
    p for p in FIXTURES.glob("*.toml") if p.name != "unknown_dataset_on_node.toml"
)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_each_fixture_reports_its_problem_at_its_position(path: Path) -> None:
    expected = _expectation(path)
    outcome = read_policy(path, now=NOW)
    if expected is None:
        assert outcome.diagnostics == () and outcome.policy is not None
        return
    severity, line, column, text = expected
    found = [
        d for d in outcome.diagnostics if (d.severity, d.line, d.column) == (severity, line, column)
    ]
    assert any(text in d.message for d in found), [d.format() for d in outcome.diagnostics]
    if severity == "error":
        assert outcome.policy is None
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}:\d+:\d+: "):
            load_policy(path)
    else:
        assert outcome.policy is not None and not outcome.errors


def test_unknown_dataset_is_an_error_next_to_the_node(tmp_path: Path) -> None:
    from fedtrace.pki import init_ca

    init_ca(tmp_path / "ca")
    init_node(tmp_path / "EE", "EE", tmp_path / "ca", "127.0.0.1:0")
    path = FIXTURES / "unknown_dataset_on_node.toml"
    report = check_policies([path], node_dir=tmp_path / "EE", now=NOW)
    [error] = [d for d in report.diagnostics if d.severity == "error"]
    assert (error.line, error.column) == (7, 12)
    assert "dataset 'walets' is not defined in" in error.message
    assert '(did you mean "wallets"?)' in error.message
    assert report.exit_code() == 1
    # Copied beside the node's node.toml as its policy, the check finds the node itself.
    (tmp_path / "EE" / "policy.toml").write_text(path.read_text())
    assert check_policies([tmp_path / "EE" / "policy.toml"], now=NOW).errors == 1


def test_cli_check_prints_file_line_column_and_exits_by_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "check", str(FIXTURES / "typo_key.toml")]) == 1
    out = capsys.readouterr().out
    assert f"{FIXTURES / 'typo_key.toml'}:8:1: error: unknown key 'max_item_per_query'" in out
    assert main(["policy", "check", str(FIXTURES / "expired.toml")]) == 0  # warnings only
    assert main(["policy", "check", "--strict", str(FIXTURES / "expired.toml")]) == 1
    assert main(["policy", "check", *map(str, sorted(POLICIES.glob("*.toml")))]) == 0


def test_every_diagnostic_has_a_position_in_the_file() -> None:
    for path in FIXTURE_FILES:
        lines = path.read_text().splitlines()
        for diagnostic in read_policy(path, now=NOW).diagnostics:
            assert 1 <= diagnostic.line <= len(lines), diagnostic.format()
            assert 1 <= diagnostic.column <= len(lines[diagnostic.line - 1]) + 1


def test_complete_policy_parses_every_key() -> None:
    policy = load_policy(FIXTURES / "complete.toml")
    membership, aggregate, request, overlap = policy.grants
    assert membership.partners == ("FR", "SG") and membership.line == 12
    assert membership.rate_limit is not None and membership.rate_limit.queries == 50
    assert membership.rate_limit.per == Period(86_400, "day")
    assert membership.item_budget is not None and membership.item_budget.per.seconds == 30 * 86_400
    assert membership.legal_bases == ("MLA", "EGMONT", "BUDAPEST-ART25")  # from [defaults]
    assert membership.valid_from == dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert membership.expires == dt.datetime(2099, 1, 1, tzinfo=dt.UTC)
    assert aggregate.clip_bounds("total_in_eur") == (0.0, 1_000_000.0)
    assert aggregate.epsilon_budget is not None and aggregate.epsilon_budget.epsilon == 10.0
    assert aggregate.total_only and aggregate.noise and aggregate.min_cohort == 5
    assert request.disclosable_fields == ("tx_count", "first_seen")
    assert (request.approval, request.answer_within_days, request.preservation_days_max) == (
        "automatic",
        10,
        60,
    )
    assert request.legal_bases == ("MLA",)  # the grant overrides [defaults]
    assert overlap.reveal_to_owner and overlap.max_items_per_query == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("hour", 3600), ("day", 86_400), ("week", 604_800), ("30d", 2_592_000), ("12h", 43_200)],
)
def test_periods(text: str, seconds: int) -> None:
    period = Period.parse(text)
    assert period is not None and period.seconds == seconds


@pytest.mark.parametrize("text", ["month", "0d", "30", "d", "-1d", "1.5d"])
def test_bad_periods(text: str) -> None:
    assert Period.parse(text) is None


def test_source_map_finds_keys_in_tables_inline_tables_and_after_multiline_values() -> None:
    text = (
        'a = 1\nb = """\nc = 2\n"""\nd = [\n  "x",\n]\n[defaults]\ne = { f = 1, g = 2 }\n'
        "[[grant]]\nh = 1\n[[grant]]\nh = 2\n"
    )
    source = SourceMap(text)
    assert source.position(("a",)) == (1, 1)
    assert ("c",) not in source.keys  # inside a multi-line string
    assert source.position(("defaults", "e", "g")) == (9, 14)
    assert source.position(("grant", 1, "h")) == (13, 1)
    assert source.position(("grant", 1, "h"), value=True) == (13, 5)
    assert source.position(("grant", 1, "missing")) == (12, 1)


def _policy(text: str) -> object:
    outcome = parse_policy(text.encode(), Path("p.toml"), now=NOW)
    assert outcome.policy is not None, [d.format() for d in outcome.diagnostics]
    return outcome.policy


BASE = 'jurisdiction = "EE"\nversion = "v"\n'


def _facts(**changes: object) -> RequestFacts:
    values: dict[str, object] = dict(
        partner="FR",
        role="investigator",
        kind=QueryKind.MATCH,
        dataset="wallets",
        asked=Level.MEMBERSHIP,
        item_count=10,
        case_ref="C-1",
        legal_basis="MLA",
    )
    values.update(changes)
    return RequestFacts(**values)  # type: ignore[arg-type]


def test_deny_by_default_and_levels() -> None:
    policy = _policy(
        BASE + '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
        'disclosure = "cardinality"\nmax_items_per_query = 100\n'
    )
    assert not decide(policy, _facts(partner="SG"), NOW).allowed  # type: ignore[arg-type]
    assert not decide(policy, _facts(dataset="subjects"), NOW).allowed  # type: ignore[arg-type]
    decision = decide(policy, _facts(), NOW)  # type: ignore[arg-type]
    assert decision.allowed and decision.level is Level.CARDINALITY  # lower grant answers
    assert not decide(policy, _facts(role="node"), NOW).allowed  # type: ignore[arg-type]
    legacy = decide_match(
        policy,
        "FR",
        "investigator",
        "wallets",  # type: ignore[arg-type]
        Level.MEMBERSHIP,
        10,
    )
    assert legacy.allowed and legacy.level is Level.CARDINALITY


def test_case_legal_basis_validity_and_item_limit_are_checked() -> None:
    policy = _policy(
        BASE + '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
        'disclosure = "membership"\nmax_items_per_query = 100\n'
        'legal_bases = ["MLA"]\nexpires = 2026-12-01\n'
        '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
        'disclosure = "cardinality"\nmax_items_per_query = 500\n'
        'legal_bases = ["EGMONT"]\n'
    )
    assert decide(policy, _facts(), NOW).level is Level.MEMBERSHIP  # type: ignore[arg-type]
    # Another legal basis falls to the grant that accepts it.
    egmont = decide(policy, _facts(legal_basis="EGMONT"), NOW)  # type: ignore[arg-type]
    assert egmont.allowed and egmont.level is Level.CARDINALITY
    refused = decide(policy, _facts(legal_basis="BUDAPEST-ART25"), NOW)  # type: ignore[arg-type]
    assert not refused.allowed and "does not accept 'BUDAPEST-ART25'" in refused.reason
    no_case = decide(policy, _facts(case_ref=""), NOW)  # type: ignore[arg-type]
    assert not no_case.allowed and no_case.code == "INVALID_ARGUMENT"
    big = decide(policy, _facts(item_count=200), NOW)  # type: ignore[arg-type]
    assert not big.allowed and "200 items exceed EE's limit of 100" in big.reason
    big = decide(policy, _facts(item_count=200, legal_basis="EGMONT"), NOW)  # type: ignore[arg-type]
    assert big.allowed and big.level is Level.CARDINALITY  # only the 500-item grant fits
    later = decide(policy, _facts(), dt.datetime(2026, 12, 2, tzinfo=dt.UTC))  # type: ignore[arg-type]
    assert not later.allowed and "does not accept 'MLA'" in later.reason


def test_expired_grant_is_named_in_the_refusal() -> None:
    policy = _policy(
        BASE + '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
        'disclosure = "membership"\nmax_items_per_query = 100\n'
        "expires = 2026-01-01\n"
    )
    decision = decide(policy, _facts(), NOW)  # type: ignore[arg-type]
    assert not decision.allowed and "grant #1 (line 3) expired on 2026-01-01" in decision.reason


def test_query_kinds_need_their_grants() -> None:
    policy = _policy(
        BASE + '[[grant]]\npartners = ["FR"]\ndatasets = ["wallets"]\n'
        'disclosure = "membership"\nmax_items_per_query = 100\n'
        'aggregate_columns = ["tx_count"]\nclip = { tx_count = [0, 100] }\n'
        "epsilon_per_query = 0.5\n"
        'epsilon_budget = { epsilon = 5.0, per = "30d" }\nepsilon_lifetime = 20.0\n'
    )
    aggregate = decide(
        policy,
        _facts(
            kind=QueryKind.AGGREGATE,  # type: ignore[arg-type]
            columns=("tx_count",),
            epsilon=0.5,
        ),
        NOW,
    )
    assert aggregate.allowed and aggregate.level is Level.AGGREGATE
    wrong_column = decide(
        policy,
        _facts(
            kind=QueryKind.AGGREGATE,  # type: ignore[arg-type]
            columns=("total_in_eur",),
        ),
        NOW,
    )
    assert not wrong_column.allowed and "total_in_eur" in wrong_column.reason
    too_much = decide(
        policy,
        _facts(
            kind=QueryKind.AGGREGATE,  # type: ignore[arg-type]
            columns=("tx_count",),
            epsilon=2.0,
        ),
        NOW,
    )
    assert not too_much.allowed and "epsilon 2 exceeds" in too_much.reason
    assert not decide(policy, _facts(kind=QueryKind.OVERLAP), NOW).allowed  # type: ignore[arg-type]
    assert not decide(policy, _facts(kind=QueryKind.DISCLOSE), NOW).allowed  # type: ignore[arg-type]


def test_explain_says_what_a_partner_may_and_may_not_learn() -> None:
    policy = load_policy(FIXTURES / "complete.toml")
    text = explain(policy, "FR", now=NOW)
    assert "Dataset wallets:" in text
    assert "membership — it learns which of its watchlist items EE holds" in text
    assert "50 queries per day" in text and "100,000 items per 30 days" in text
    assert "Legal bases accepted: MLA, EGMONT, BUDAPEST-ART25" in text
    assert "until 2099-01-01 00:00 UTC" in text
    assert "total_in_eur clipped to [0, 1,000,000]" in text
    assert "FR may not: include this dataset in an overlap query." in text
    nobody = explain(policy, "NL", now=NOW)
    assert "Nothing: no grant names NL" in nobody
    sg = explain(policy, "SG", "wallets", now=NOW)
    assert "SG may not:" in sg and "no aggregate grant" in sg


def test_diff_says_more_or_less_and_limits_up_or_down(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    new = tmp_path / "new.toml"
    grant = (
        '[[grant]]\npartners = ["{p}"]\ndatasets = ["wallets"]\ndisclosure = "{d}"\n'
        "max_items_per_query = {n}\n{extra}"
    )
    old.write_text(
        BASE
        + grant.format(p="FR", d="membership", n=100, extra="")
        + grant.format(p="SG", d="cardinality", n=10, extra="")
    )
    new.write_text(
        BASE.replace('"v"', '"w"')
        + grant.format(
            p="FR", d="cardinality", n=200, extra='rate_limit = { queries = 5, per = "day" }\n'
        )
        + grant.format(p="NL", d="membership", n=10, extra="")
    )
    text = diff(load_policy(old), load_policy(new))
    assert "FR · wallets: membership → cardinality (LESS disclosed)" in text
    assert "max_items_per_query: 100 → 200 (looser" in text
    assert "rate_limit: none → 5 per day (tighter" in text
    assert "SG · wallets: cardinality → nothing (LESS disclosed: access removed)" in text
    assert "NL · wallets: nothing → membership (MORE disclosed: new access)" in text


def test_cli_explain_and_diff(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", str(POLICIES / "EE.toml"), "--partner", "SG"]) == 0
    assert "only how many of its watchlist items EE holds" in capsys.readouterr().out
    assert main(["policy", "diff", str(POLICIES / "EE.toml"), str(POLICIES / "EE.toml")]) == 0
    assert "No partner's access changes." in capsys.readouterr().out
    assert main(["policy", "explain", str(FIXTURES / "typo_key.toml"), "--partner", "FR"]) == 2
    assert "typo_key.toml:4:1:" in capsys.readouterr().err
