"""`fedtrace --version`, and a help text on every option and argument of every command."""

from __future__ import annotations

import argparse

import pytest

from fedtrace import __version__
from fedtrace.cli import build_parser, main
from fedtrace.cli.args import without_help

# Every command group; every option and argument in each of them has help.
GROUPS = (
    "pki",
    "node",
    "policy",
    "audit",
    "console",
    "query",
    "request",
    "report",
    "id",
    "demo",
    "monitor",
)


def _group(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    group: argparse.ArgumentParser = commands.choices[name]
    return group


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out == f"fedtrace {__version__}\n"


@pytest.mark.parametrize("name", GROUPS)
def test_every_option_has_help(name: str) -> None:
    parser = build_parser()
    assert list(without_help(_group(parser, name), f"fedtrace {name}")) == []


def test_the_whole_tree_has_help() -> None:
    assert list(without_help(build_parser())) == []


def test_every_group_is_walked() -> None:
    root = build_parser()
    [commands] = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(GROUPS)


@pytest.mark.parametrize(
    "command",
    ["init", "serve", "requests", "approve", "refuse", "release", "shared", "health", "rejects"],
)
def test_every_node_command_is_walked(command: str) -> None:
    node = _group(build_parser(), "node")
    [actions] = [a for a in node._actions if isinstance(a, argparse._SubParsersAction)]
    assert command in actions.choices
    assert list(without_help(actions.choices[command], f"fedtrace node {command}")) == []


def test_the_root_options_have_help() -> None:
    root = build_parser()
    options = [a for a in root._actions if not isinstance(a, argparse._SubParsersAction)]
    assert {o.dest for o in options} == {"help", "version"} and all(o.help for o in options)


def test_the_walk_finds_an_option_without_help() -> None:
    parser = argparse.ArgumentParser(prog="x")
    sub = parser.add_subparsers().add_parser("y")
    sub.add_argument("--with", help="has help")
    sub.add_argument("--without")
    sub.add_argument("value")
    assert list(without_help(parser, "x")) == ["x y --without", "x y value"]


def test_query_match_help_says_what_a_case_and_legal_basis_are(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["query", "match", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--case REF case reference: 1–64 characters of letters, digits and . _ / -" in text
    assert "--legal-basis B legal basis code, e.g. MLA, EIO, JIT" in text
