"""The `fedtrace` command starts lean: its parser and help import no heavy library.

Each check runs in a fresh interpreter (a subprocess), since this test process has
imported most of the project already. A command imports what it needs inside its
handler; `--help` and `query match --help` must not pay for HE, the console, DP or
a cluster client.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Never imported by `import fedtrace.cli` or by building and printing a help text.
HEAVY = ("tenseal", "starlette", "opendp", "distributed")
#: Also kept out of the start-up path today; a handler imports them when it runs.
KEPT_OUT = ("duckdb", "grpc", "numpy", "rich", "uvicorn", "jinja2", "pyarrow")

_PROBE = """
import json, sys
import fedtrace.cli
argv = json.loads(sys.argv[1])
if argv:
    parser = fedtrace.cli.build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit:
        pass
names = json.loads(sys.argv[2])
print(json.dumps(sorted(n for n in names if n in sys.modules)))
"""


def _loaded_after(argv: list[str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(argv), json.dumps(HEAVY + KEPT_OUT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return loaded


def test_import_fedtrace_cli_loads_no_heavy_library() -> None:
    loaded = _loaded_after([])
    assert not set(loaded) & set(HEAVY), f"`import fedtrace.cli` imports {loaded}"
    assert not loaded, f"`import fedtrace.cli` imports {loaded}: import them in the handler"


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["query", "match", "--help"], ["node", "--help"], ["query", "--help"]],
    ids=" ".join,
)
def test_help_loads_no_heavy_library(argv: list[str]) -> None:
    loaded = _loaded_after(argv)
    assert not loaded, f"`fedtrace {' '.join(argv)}` imports {loaded}"
