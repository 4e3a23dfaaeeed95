"""Item 7 and file modes: epoch scalars live outside node.duckdb, 0600 in a 0700 directory,
destroyed when their epoch ends; the node's database and trail are private too."""

from __future__ import annotations

import datetime as dt
import logging
import stat
from pathlib import Path

import pytest

from node.audit import AUDIT_DIR, HEAD_FILE, TRAIL_FILE
from node.epoch import KEYS_DIR, current_epoch, key_path
from tests.adversarial.conftest import Target


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _database_bytes(target: Target) -> bytes:
    data = target.config.database.read_bytes()
    wal = target.config.database.with_name(target.config.database.name + ".wal")
    return data + (wal.read_bytes() if wal.exists() else b"")


def test_no_copy_of_the_database_holds_an_epoch_scalar(target: Target) -> None:
    state = target.state()
    old = state.epochs["wallets"]
    keys = target.node_dir / KEYS_DIR
    assert _mode(keys) == 0o700
    assert _mode(key_path(keys, "wallets", old.epoch_id)) == 0o600
    dataset = target.config.dataset("wallets")
    assert dataset is not None
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)  # past epoch_hours: a new epoch
    new = current_epoch(target.database, dataset, target.config.epoch_hours, now=later)
    assert new.epoch_id != old.epoch_id
    with target.database.session() as con:
        con.execute("CHECKPOINT")
    held = _database_bytes(target)
    assert old.secret_key not in held and new.secret_key not in held
    assert not key_path(keys, "wallets", old.epoch_id).exists()  # destroyed with its epoch
    assert key_path(keys, "wallets", new.epoch_id).read_bytes() == new.secret_key


def test_a_scalar_left_in_the_database_by_an_older_version_is_moved_out(
    target: Target, caplog: pytest.LogCaptureFixture
) -> None:
    epoch = target.state().epochs["wallets"]
    keys = target.node_dir / KEYS_DIR
    with target.database.session() as con:  # as an older version wrote it
        con.execute(
            "UPDATE epochs SET secret_key = ? WHERE epoch_id = ?",
            [epoch.secret_key, epoch.epoch_id],
        )
    key_path(keys, "wallets", epoch.epoch_id).unlink()
    with caplog.at_level(logging.WARNING):
        again = target.state().epochs["wallets"]
    assert again.epoch_id == epoch.epoch_id and again.secret_key == epoch.secret_key
    assert key_path(keys, "wallets", epoch.epoch_id).read_bytes() == epoch.secret_key
    assert any("moved out of the database" in r.getMessage() for r in caplog.records)
    with target.database.session() as con:
        stored = con.execute("SELECT secret_key FROM epochs").fetchall()
    assert all(bytes(row[0]) == b"" for row in stored)


def test_the_node_creates_its_files_private(target: Target) -> None:
    target.state()
    audit = target.node_dir / AUDIT_DIR
    assert _mode(target.node_dir) == 0o700
    assert _mode(target.config.database) == 0o600
    assert _mode(audit) == 0o700
    assert _mode(audit / TRAIL_FILE) == 0o600 and _mode(audit / HEAD_FILE) == 0o600
