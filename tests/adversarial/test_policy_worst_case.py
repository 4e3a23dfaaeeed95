"""Item 8: `policy explain` states each grant's worst case in numbers; `policy check` warns."""

from __future__ import annotations

from pathlib import Path

from node.policy import load_policy
from node.policy.check import check_policies
from node.policy.explain import explain

POLICY = """jurisdiction = "EE"
version = "wc-1"
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "cardinality"
max_items_per_query = 1000
item_budget = { items = 100000, per = "30d" }
[[grant]]
partners = ["FR"]
datasets = ["subjects"]
disclosure = "aggregate"
max_items_per_query = 100
aggregate_columns = ["total_in_eur"]
clip = { total_in_eur = [0, 10000] }
epsilon_per_query = 0.5
epsilon_budget = { epsilon = 5.0, per = "30d" }
epsilon_lifetime = 50.0
rate_limit = { queries = 10, per = "day" }
[[grant]]
partners = ["NL"]
datasets = ["wallets"]
disclosure = "aggregate"
max_items_per_query = 100
aggregate_columns = ["total_in_eur"]
clip = { total_in_eur = [0, 10000] }
noise = "off"
"""


def test_explain_states_the_worst_case_in_numbers(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    text = explain(load_policy(path), "FR")
    assert (
        "a partner running modified software): it can learn which of up to 100,000 tested "
        "items per 30 days EE holds" in text
    )
    # scale = max(|0|, |10000|) × (1 column + count) / 0.5
    assert "total_in_eur in [0, 10,000] plus noise of scale 40,000" in text
    assert "up to 10 per day" in text
    exact = explain(load_policy(path), "NL")
    assert "single records' exact values up to the clip bounds" in exact


def test_check_warns_on_counts_without_an_item_budget_and_on_noise_off(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    warnings = [d.message for d in check_policies([path]).diagnostics if d.severity == "warning"]
    assert sum("without an 'item_budget'" in w for w in warnings) == 2  # grants #2 and #3
    assert any('noise = "off"' in w for w in warnings)
