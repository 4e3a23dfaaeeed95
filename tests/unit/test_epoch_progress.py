"""Start-up progress of a new epoch: items blinded so far / in all, chunk by chunk."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from fedtrace import group
from node import epoch, server
from node.table_order import ordered_table


def test_the_table_is_blinded_chunk_by_chunk_and_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(epoch, "BLIND_CHUNK", 10)
    key = group.random_scalar()
    items = [f"wallet:{i}".encode() for i in range(25)]
    heard: list[tuple[str, int, int]] = []
    table = epoch._ordered_table("wallets", items, key, lambda *done: heard.append(done))
    assert heard == [("wallets", 10, 25), ("wallets", 20, 25), ("wallets", 25, 25)]
    assert table == ordered_table(items, key, workers=1)


def test_chunks_stay_large_enough_for_every_worker() -> None:
    assert epoch.BLIND_CHUNK >= 4096 and epoch.BLIND_CHUNK > group.PARALLEL_THRESHOLD


def test_without_a_terminal_progress_is_plain_log_lines(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    with caplog.at_level(logging.INFO, logger=server.log.name):
        with server.epoch_progress() as progress:
            progress("dataset wallets: blinding 200,000 items for a new epoch")
            progress.blinded("wallets", 80_000, 200_000)
            progress.blinded("wallets", 200_000, 200_000)  # the last: no line
    assert caplog.messages == [
        "dataset wallets: blinding 200,000 items for a new epoch",
        "dataset wallets: blinded 80,000 of 200,000 items",
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_bar_shows_items_done_of_all(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with server.epoch_progress() as progress:
        progress("dataset wallets: blinding 200,000 items for a new epoch")
        progress.blinded("wallets", 80_000, 200_000)
        progress.blinded("wallets", 200_000, 200_000)
        progress("serving")
    assert "200,000/200,000" in terminal.getvalue()
