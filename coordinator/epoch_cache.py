"""What the coordinator keeps per node epoch: match filters and aggregate position tags.

Both are public per epoch, large, and the same for every query until the node
starts a new epoch, so they are kept in memory and, between runs, on disk under
``$FEDTRACE_CACHE_DIR`` (default ``~/.cache/fedtrace``). A cache file is named by
the SHA-256 of (node, dataset, epoch): nothing a node sends becomes part of a path.
Epoch ids from nodes are checked first (hex, at most 64 characters).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.results import NodeFailure
from fedtrace import gcs
from fedtrace.aggregate import TAG_BYTES
from fedtrace.wire import NodeStatus

EpochKey = tuple[str, str, str]  # (node, dataset, epoch id)
MAX_EPOCH_ID_CHARS = 64
_EPOCH_ID = re.compile(rf"^[0-9a-f]{{1,{MAX_EPOCH_ID_CHARS}}}$")


def checked_epoch_id(node: str, epoch_id: str) -> str:
    """The epoch id a node announced, or NodeFailure when it is not a short hex string."""
    if not _EPOCH_ID.match(epoch_id):
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node} announced epoch id {epoch_id[:80]!r}; an epoch id is at most "
            f"{MAX_EPOCH_ID_CHARS} lowercase hex digits",
        )
    return epoch_id


def cache_base() -> Path:
    """The coordinator's cache directory: $FEDTRACE_CACHE_DIR, else the user's cache."""
    base = os.environ.get("FEDTRACE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fedtrace"
    )
    return Path(base)


def cache_file_name(key: EpochKey, suffix: str) -> str:
    """A file name that says nothing of the key and holds no character the key brought."""
    node, dataset, epoch_id = key
    checked_epoch_id(node, epoch_id)
    digest = hashlib.sha256("\x00".join(key).encode("utf-8")).hexdigest()
    return digest + suffix


def _write_atomically(path: Path, blob: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(blob)
    tmp.replace(path)


@dataclass
class FilterCache:
    """Node filters by (node, dataset, epoch): in memory, and on disk between runs."""

    directory: Path | None
    _memory: dict[EpochKey, gcs.GolombFilter] = field(default_factory=dict)

    @staticmethod
    def default() -> FilterCache:
        return FilterCache(cache_base() / "filters")

    def path(self, key: EpochKey) -> Path | None:
        return self.directory / cache_file_name(key, ".gcs") if self.directory else None

    def get(self, key: EpochKey) -> gcs.GolombFilter | None:
        if key in self._memory:
            return self._memory[key]
        path = self.path(key)
        if path is None or not path.exists():
            return None
        blob = path.read_bytes()
        count, bits = int.from_bytes(blob[:8], "big"), int.from_bytes(blob[8:12], "big")
        try:
            filter_ = gcs.GolombFilter.from_bytes(count, bits, blob[12:])
        except ValueError:
            return None  # a damaged cache entry is refetched, not trusted
        self._memory[key] = filter_
        return filter_

    def put(self, key: EpochKey, filter_: gcs.GolombFilter) -> None:
        path = self.path(key)
        self._memory[key] = filter_
        if path is not None:
            _write_atomically(
                path,
                filter_.item_count.to_bytes(8, "big")
                + filter_.remainder_bits.to_bytes(4, "big")
                + filter_.data,
            )


@dataclass
class TagCache:
    """Position tags by (node, dataset, epoch): in memory, and on disk between runs."""

    directory: Path | None
    _memory: dict[EpochKey, bytes] = field(default_factory=dict)

    @staticmethod
    def default() -> TagCache:
        return TagCache(cache_base() / "tags")

    def path(self, key: EpochKey) -> Path | None:
        return self.directory / cache_file_name(key, ".tags") if self.directory else None

    def get(self, key: EpochKey) -> bytes | None:
        tags = self._memory.get(key)
        path = self.path(key)
        if tags is None and path is not None and path.exists():
            tags = path.read_bytes()
        if tags is None or len(tags) % TAG_BYTES:
            return None
        self._memory[key] = tags
        return tags

    def put(self, key: EpochKey, tags: bytes) -> None:
        path = self.path(key)
        self._memory[key] = tags
        if path is not None:
            _write_atomically(path, tags)
