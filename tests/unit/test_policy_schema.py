"""policies/policy.schema.json: accepts every example policy, rejects unknown keys and wrong types,
and names exactly the keys and levels the policy parser knows (it is checked by the real
check-jsonschema CLI, as an operator or CI runs it)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import fedtrace.cli
from fedtrace.wire import Level

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
SCHEMA = POLICIES / "policy.schema.json"
CHECKER = Path(sys.executable).parent / "check-jsonschema"
EXAMPLES = sorted(POLICIES.glob("*.toml"))

HEADER = 'jurisdiction = "EE"\nversion = "test-1"\n'
MEMBERSHIP = """
[[grant]]
partners = ["FR"]
datasets = ["wallets"]
disclosure = "membership"
max_items_per_query = 100
"""

# Broken policies: each must be refused by the schema and by `fedtrace policy check`.
BROKEN = {
    "misspelt top-level key": HEADER.replace("jurisdiction", "jurisdction"),
    "grant key at top level": HEADER + "max_items_per_query = 5\n" + MEMBERSHIP,
    "misspelt grant key": HEADER + MEMBERSHIP.replace("max_items_per_query", "max_item_per_query"),
    "unknown key in defaults": HEADER + "[defaults]\nlegal_basis = ['MLA']\n" + MEMBERSHIP,
    "unknown key in rate_limit": HEADER + MEMBERSHIP + 'rate_limit = { querys = 5, per = "day" }\n',
    "string for an integer": HEADER + MEMBERSHIP.replace("= 100", '= "100"'),
    "zero items": HEADER + MEMBERSHIP.replace("= 100", "= 0"),
    "string for a boolean": HEADER + MEMBERSHIP + 'require_case = "yes"\n',
    "partners not an array": HEADER + MEMBERSHIP.replace('["FR"]', '"FR"'),
    "lower-case partner": HEADER + MEMBERSHIP.replace('["FR"]', '["fr"]'),
    "empty partners": HEADER + MEMBERSHIP.replace('["FR"]', "[]"),
    "unknown level": HEADER + MEMBERSHIP.replace('"membership"', '"membershp"'),
    "unknown period": HEADER + MEMBERSHIP + 'rate_limit = { queries = 5, per = "month" }\n',
    "noise not on/off": HEADER + MEMBERSHIP + "noise = false\n",
    "clip not a pair": HEADER + MEMBERSHIP + "aggregate_columns = ['x']\nclip = { x = [1] }\n",
    "negative epsilon": HEADER + MEMBERSHIP + "epsilon_per_query = -1.0\n",
    "grant without partners": HEADER + MEMBERSHIP.replace('partners = ["FR"]\n', ""),
    "membership without max_items_per_query": HEADER
    + MEMBERSHIP.replace("max_items_per_query = 100\n", ""),
    "missing version": 'jurisdiction = "EE"\n',
    "local time for a date": HEADER + MEMBERSHIP + "expires = 07:32:00\n",
}

# Valid, if unusual: keys from [defaults], an overlap grant without an item limit, dates.
VALID = {
    "deny all": HEADER,
    "partners and limit from defaults": HEADER
    + '[defaults]\npartners = ["FR"]\nmax_items_per_query = 10\n'
    + '[[grant]]\ndatasets = ["wallets"]\ndisclosure = "cardinality"\n',
    "overlap needs no item limit": HEADER
    + '[[grant]]\npartners = ["FR", "SG"]\ndatasets = ["wallets"]\ndisclosure = "overlap"\n'
    + 'reveal_to_owner = true\nrate_limit = { queries = 4, per = "30d" }\n',
    "dates and date-times": HEADER
    + MEMBERSHIP
    + "valid_from = 2026-01-01\nexpires = 2027-06-30T12:00:00+02:00\n",
    "every partner": HEADER + MEMBERSHIP.replace('["FR"]', '["*"]'),
}


def check(*files: Path) -> subprocess.CompletedProcess[str]:
    if not CHECKER.exists():
        pytest.skip(f"{CHECKER} is not installed (pip install -e '.[test]')")
    return subprocess.run(
        [str(CHECKER), "--schemafile", str(SCHEMA), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def policy_check(path: Path) -> int:
    return fedtrace.cli.main(["policy", "check", str(path)])


def _policy_constant(name: str) -> tuple[str, ...]:
    """A constant of the policy parser, wherever in `node.policy` it is defined."""
    package: ModuleType = importlib.import_module("node.policy")
    modules = [package]
    for info in pkgutil.iter_modules(getattr(package, "__path__", [])):
        modules.append(importlib.import_module(f"node.policy.{info.name}"))
    for module in modules:
        value = getattr(module, name, None)
        if isinstance(value, tuple):
            return value
    raise AssertionError(f"node.policy defines no {name}")


def readme_policies() -> list[str]:
    """Every TOML example in policies/README.md, made a whole policy file."""
    blocks = re.findall(r"```toml\n(.*?)```", (POLICIES / "README.md").read_text(), re.S)
    return [block if "jurisdiction =" in block else HEADER + block for block in blocks]


def test_schema_is_a_valid_2020_12_schema() -> None:
    if not CHECKER.exists():
        pytest.skip(f"{CHECKER} is not installed")
    done = subprocess.run(
        [str(CHECKER), "--check-metaschema", str(SCHEMA)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(SCHEMA.read_text())["$schema"].endswith("/draft/2020-12/schema")


def test_schema_names_the_parsers_keys_and_levels() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert set(schema["properties"]) == set(_policy_constant("TOP_KEYS"))
    grant = schema["$defs"]["grantKeys"]
    assert set(grant["properties"]) == set(_policy_constant("GRANT_KEYS"))
    assert grant["properties"]["disclosure"]["enum"] == [level.label for level in Level]
    assert "fedtrace policy check" in schema["description"]


def test_every_example_policy_passes() -> None:
    assert {path.name for path in EXAMPLES} >= {"EE.toml", "FR.toml", "SG.toml"}
    done = check(*EXAMPLES)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_examples_pass(tmp_path: Path) -> None:
    files = []
    for number, text in enumerate(readme_policies()):
        path = tmp_path / f"readme-{number}.toml"
        path.write_text(text)
        files.append(path)
    assert len(files) >= 4
    done = check(*files)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("case", sorted(VALID))
def test_unusual_but_valid_policies_pass(case: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(VALID[case])
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert policy_check(path) == 0


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_policies_are_refused(case: str, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BROKEN[case])
    done = check(path)
    assert done.returncode == 1, f"{case}: accepted\n{done.stdout}{done.stderr}"
    assert "policy.toml" in done.stdout + done.stderr
    assert policy_check(path) == 1, f"{case}: fedtrace policy check accepted it"
