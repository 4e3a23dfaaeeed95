"""Watchlist comments (whole-line and trailing), and `fedtrace id normalize` reading stdin."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from fedtrace.cli import main
from fedtrace.identifiers import canonicalize, load_watchlist

LOWER = "0x52908400098527886e0f7030069857d2e4169ee7"
OTHER = "0xde709f2102306220921060314715629080e2fb77"
CHECKSUMMED = canonicalize("eth", LOWER.upper().replace("0X", "0x"))


def test_text_watchlists_take_trailing_comments(tmp_path: Path) -> None:
    path = tmp_path / "watchlist.txt"
    path.write_text(
        "# suspects, case C-1\n"
        f"{LOWER}  # suspect\n"
        f"  {OTHER}\t# the exchange's hot wallet\n"
        "\n"
        "   # an indented comment\n"
        "0xnot#a-comment\n"
    )
    watchlist = load_watchlist(path, "eth")
    assert watchlist.items == (CHECKSUMMED, canonicalize("eth", OTHER))
    assert watchlist.lines == 3
    [problem] = watchlist.problems
    assert (problem.line, problem.value) == (6, "0xnot#a-comment")  # a '#' inside is no comment


def test_csv_watchlists_are_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "watchlist.csv"
    path.write_text(f"address,note\n{LOWER},suspect # one\n# skipped row\n")
    assert load_watchlist(path, "eth").items == (CHECKSUMMED,)


def test_id_normalize_reads_stdin_without_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"# from a watchlist\n{LOWER}  # suspect\n\n"))
    assert main(["id", "normalize", "--kind", "eth"]) == 0
    assert capsys.readouterr().out == f"{CHECKSUMMED}\n"


def test_id_normalize_stdin_reports_invalid_values(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{LOWER}\n0x12\n"))
    assert main(["id", "normalize", "--kind", "eth"]) == 1
    out, err = capsys.readouterr()
    assert out == f"{CHECKSUMMED}\n" and err.startswith("invalid eth '0x12': ")


def test_id_normalize_values_still_win_over_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(f"{OTHER}\n"))
    assert main(["id", "normalize", "--kind", "eth", LOWER]) == 0
    assert capsys.readouterr().out == f"{CHECKSUMMED}\n"


def test_id_normalize_on_a_terminal_without_values_says_what_to_do(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr("sys.stdin", terminal)
    assert main(["id", "normalize", "--kind", "eth"]) == 2
    assert capsys.readouterr().err == (
        "fedtrace: error: give VALUE arguments, or pipe the values on stdin (one per line)\n"
    )
