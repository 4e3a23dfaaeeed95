"""The fast tier stays fast: a test module that starts node processes is marked slow.

`scripts/test -m "not slow"` must not start a `fedtrace node serve`. This reads every
test module's source (nothing is imported or run) and finds the ones that start
nodes: they use `fedtrace.harness` or the demo (or a conftest class built on the
harness), run a serving `fedtrace` command (`node serve`, `demo`, `console`), or take a
fixture, their own or a conftest.py's, that does. Each of those must carry
`pytestmark = pytest.mark.slow` (alone or in a list).
"""

from __future__ import annotations

import ast
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# Modules whose use starts `fedtrace node serve` processes, and their serving names.
SERVING_MODULES = ("fedtrace.harness", "fedtrace.demo")
SERVING_NAMES = frozenset({"LocalFederation", "LocalNode", "run_demo"})
# `fedtrace` sub-commands that start a serving process, and the helpers that run `fedtrace`.
SERVING_COMMANDS = frozenset({"serve", "demo", "console"})
CLI_CALLS = frozenset({"fedtrace", "run_cli", "cli_argv"})


@dataclass
class Conftests:
    """What the conftest.py files above a module offer: serving fixtures and classes."""

    fixtures: set[str] = field(default_factory=set)
    classes: set[str] = field(default_factory=set)


def _is_fixture(function: ast.FunctionDef) -> bool:
    return any("fixture" in ast.unparse(decorator) for decorator in function.decorator_list)


def _functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]


def _names(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def harness_classes(tree: ast.Module, serving: AbstractSet[str] = SERVING_NAMES) -> set[str]:
    """Classes in a module built on the harness (subclasses, transitively)."""
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name not in found:
                if {ast.unparse(base) for base in node.bases} & (serving | found):
                    found.add(node.name)
                    changed = True
    return found


def serving_fixtures(tree: ast.Module, serving: AbstractSet[str]) -> set[str]:
    """Fixtures of a module whose body names a serving name or class, or runs `node serve`."""
    return {
        function.name
        for function in _functions(tree)
        if _is_fixture(function)
        and (
            _names(function) & serving
            or any(
                isinstance(node, ast.Call) and _runs_serving_command(node)
                for node in ast.walk(function)
            )
        )
    }


def _constants(call: ast.Call) -> list[object]:
    """Constant arguments of a call, lists and tuples flattened (argv as a list or as *args)."""
    found: list[object] = []
    for argument in call.args:
        items = argument.elts if isinstance(argument, ast.List | ast.Tuple) else [argument]
        found += [item.value for item in items if isinstance(item, ast.Constant)]
    return found


def _runs_serving_command(call: ast.Call) -> bool:
    """A call that runs `fedtrace node serve` or `fedtrace demo`: a helper, or an argv."""
    constants = _constants(call)
    name = call.func.attr if isinstance(call.func, ast.Attribute) else ast.unparse(call.func)
    runs_cli = name in CLI_CALLS or "fedtrace.cli" in constants or "fedtrace" in constants
    return runs_cli and bool(SERVING_COMMANDS & {str(c) for c in constants})


def starts_nodes(source: str, conftests: Conftests | None = None) -> bool:
    """Whether a test module's source starts node processes, itself or through a fixture."""
    above = conftests or Conftests()
    tree = ast.parse(source)
    serving = SERVING_NAMES | harness_classes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name in SERVING_MODULES for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom):
            if node.module in SERVING_MODULES:
                return True
            if "conftest" in (node.module or "") and {a.name for a in node.names} & above.classes:
                return True
        if isinstance(node, ast.Name) and node.id in serving:
            return True
        if isinstance(node, ast.Call) and _runs_serving_command(node):
            return True
    fixtures = above.fixtures | serving_fixtures(tree, serving)
    return any(
        {argument.arg for argument in function.args.args} & fixtures
        for function in _functions(tree)
    )


def read_conftest(source: str, conftests: Conftests) -> None:
    """Add a conftest.py's serving classes and fixtures to ``conftests``."""
    tree = ast.parse(source)
    conftests.classes |= harness_classes(tree, SERVING_NAMES | conftests.classes)
    serving = SERVING_NAMES | conftests.classes
    conftests.fixtures |= serving_fixtures(tree, serving)


def marked_slow(source: str) -> bool:
    """Whether the module sets ``pytestmark`` to ``pytest.mark.slow`` or a list holding it."""
    for node in ast.parse(source).body:
        if not isinstance(node, ast.Assign):
            continue
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            value = node.value
            values = value.elts if isinstance(value, ast.List | ast.Tuple) else [value]
            if any(ast.unparse(item) == "pytest.mark.slow" for item in values):
                return True
    return False


def _conftests_for(module: Path) -> Conftests:
    """Serving fixtures and classes visible to ``module``: conftest.py files from tests/ down."""
    directories = [module.parent, *module.parent.parents]
    found = Conftests()
    for directory in reversed([d for d in directories if d == TESTS or TESTS in d.parents]):
        if (directory / "conftest.py").exists():
            read_conftest((directory / "conftest.py").read_text(), found)
    return found


def _serving_modules() -> dict[Path, bool]:
    """Every test module that starts nodes, with whether it is marked slow."""
    return {
        module: marked_slow(module.read_text())
        for module in sorted(TESTS.rglob("test_*.py"))
        if starts_nodes(module.read_text(), _conftests_for(module))
    }


def test_every_module_that_starts_nodes_is_marked_slow() -> None:
    unmarked = [str(m.relative_to(TESTS)) for m, slow in _serving_modules().items() if not slow]
    assert not unmarked, f"add `pytestmark = pytest.mark.slow` to: {', '.join(unmarked)}"


def test_the_scan_finds_the_integration_federations() -> None:
    found = {m.relative_to(TESTS).as_posix() for m in _serving_modules()}
    assert {
        "integration/test_federation.py",  # the shared conftest fixture
        "integration/test_aggregate_e2e.py",  # its own LocalFederation
        "integration/test_hostile.py",  # the conftest's Federation in a fixture of its own
        "integration/test_demo.py",  # `fedtrace demo`
        "integration/test_console.py",  # `fedtrace console`, a serving process too
    } <= found
    assert not {"unit/test_test_tiers.py", "unit/test_pki.py", "unit/test_demo_data.py"} & found


CONFTEST = """
import pytest
from fedtrace.harness import LocalFederation

class Federation(LocalFederation):
    pass

@pytest.fixture
def fed(tmp_path):
    with Federation(tmp_path) as f:
        f.start()
        yield f

@pytest.fixture
def words():
    return ["a"]

@pytest.fixture
def bare(tmp_path):
    return subprocess.Popen(["fedtrace", "node", "serve", str(tmp_path)])
"""


def test_the_scan_tells_serving_modules_from_others() -> None:
    above = Conftests()
    read_conftest(CONFTEST, above)
    assert above == Conftests(fixtures={"fed", "bare"}, classes={"Federation"})
    assert starts_nodes("def test_x(fed):\n    pass\n", above)
    assert not starts_nodes("def test_x(words):\n    pass\n", above)
    assert starts_nodes("from .conftest import Federation\n", above)
    assert not starts_nodes("class Federation:\n    pass\n", above)  # a module's own class
    assert starts_nodes("from fedtrace.harness import run_cli\n")
    assert starts_nodes("def test_x():\n    fedtrace('node', 'serve', 'dir')\n")
    assert starts_nodes("def test_x():\n    fedtrace('demo')\n")
    assert starts_nodes("subprocess.Popen([sys.executable, '-m', 'fedtrace.cli', 'node', 'serve'])")
    assert not starts_nodes("def test_x():\n    fedtrace('id', 'normalize', 'x')\n")
    assert not starts_nodes("def test_x(tmp_path_factory):\n    tmp_path_factory.mktemp('demo')\n")
    assert marked_slow("import pytest\npytestmark = pytest.mark.slow\n")
    assert marked_slow("import pytest\npytestmark = [pytest.mark.slow, pytest.mark.x]\n")
    assert not marked_slow("import pytest\npytestmark = pytest.mark.other\n")
