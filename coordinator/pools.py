"""Additive blinding pools on the coordinator: prepared offline, spent once, kept on disk.

A pool (``fedtrace.blinding``) belongs to one node's dataset epoch and the
blinding point ``C`` the node announced for it, whose Chaum–Pedersen proof is
checked before anything is prepared (``verified_binding``). Pools live in memory
and under ``$FEDTRACE_CACHE_DIR/pools`` (directory 0700, one 0600 file per
(node, dataset, epoch), named by a digest, written atomically: temporary file,
fsync, rename) under an exclusive file lock that every coordinator process on
the machine takes, so two processes never spend the same entries.
``PoolStore.take`` rewrites the file with the remaining entries *before* it
returns the entries to spend, so a crash between the two can lose entries but
never hand one out twice. Each node gets its own pool: the same
item is sent to two nodes under independent masks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coordinator.epoch_cache import cache_base, cache_file_name, checked_epoch_id
from coordinator.fanout import Deadline, NodeTrust, checked_info, dataset_info, fan_out
from coordinator.federation import Federation, NodeEntry
from coordinator.progress import Progress, silent
from coordinator.results import NodeFailure
from coordinator.transport import Connections, NodeConnection
from fedtrace import blinding, group
from fedtrace.revocation import RevocationList
from fedtrace.v1 import node_pb2
from fedtrace.wire import NodeStatus

POOL_SUFFIX = ".pool"
LOCK_FILE = ".lock"
_DIGEST_BYTES = 32  # SHA-256 of the serialised pool, at the start of each pool file


def verified_binding(node: str, dataset: node_pb2.DatasetInfo) -> blinding.PoolBinding:
    """The binding a node announces for its dataset epoch, once its proof verifies.

    NodeFailure (one line) when the node announces no blinding point, another
    group, or a blinding point whose proof does not verify.
    """
    epoch_id = checked_epoch_id(node, dataset.epoch_id)
    if dataset.group != group.GROUP_NAME or not dataset.blinding_point:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node} announces no {group.GROUP_NAME} blinding point for {dataset.name!r}",
        )
    context = blinding.blinding_context(node, dataset.name, epoch_id)
    try:
        blinding.verify_blinding_point(
            dataset.blinding_point, dataset.key_commitment, dataset.blinding_proof, context
        )
        return blinding.PoolBinding(node, dataset.name, epoch_id, dataset.blinding_point)
    except (blinding.InvalidProof, ValueError) as exc:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node}'s blinding point for {dataset.name!r} is refused: {exc}",
        ) from None


def _write_private(path: Path, blob: bytes) -> None:
    """Write `blob` to `path` as a 0600 file, atomically and durably."""
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, blob)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def encode_pool_file(pool: blinding.BlindingPool) -> bytes:
    """A pool file: the SHA-256 of the serialised pool, then the pool."""
    data = blinding.pool_to_bytes(pool)
    return hashlib.sha256(data).digest() + data


def decode_pool_file(blob: bytes) -> blinding.BlindingPool:
    """A pool file's pool, if its digest holds.

    Checking the digest instead of every entry (two point decodes each) makes
    loading a 10,000-entry pool a few milliseconds instead of about a second.
    """
    digest, data = blob[:_DIGEST_BYTES], blob[_DIGEST_BYTES:]
    if not hmac.compare_digest(hashlib.sha256(data).digest(), digest):
        raise blinding.MalformedPool("the pool file does not match its digest")
    return blinding.pool_from_bytes(data, validate=False)


@dataclass
class PoolStore:
    """Blinding pools by (node, dataset, epoch): in memory and, with a directory, on disk."""

    directory: Path | None
    _memory: dict[tuple[str, str, str], blinding.BlindingPool] = field(default_factory=dict)
    # What each pool file was when this store last read or wrote it: another process
    # that spent entries meanwhile changed it, and the file is then read again.
    _seen: dict[Path, tuple[int, int, int]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def default() -> PoolStore:
        return PoolStore(cache_base() / "pools")

    @staticmethod
    def _key(binding: blinding.PoolBinding) -> tuple[str, str, str]:
        return (binding.node, binding.dataset, binding.epoch_id)

    def path(self, binding: blinding.PoolBinding) -> Path | None:
        if self.directory is None:
            return None
        return self.directory / cache_file_name(self._key(binding), POOL_SUFFIX)

    def _ensure_directory(self) -> Path:
        assert self.directory is not None
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        return self.directory

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """This store's lock and, on disk, an exclusive lock every coordinator process takes."""
        with self._lock:
            if self.directory is None or not self.directory.is_dir():
                yield  # nothing stored yet: nothing to read, and prepare creates it
                return
            fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)  # releases the lock

    @staticmethod
    def _signature(path: Path) -> tuple[int, int, int] | None:
        try:
            found = path.stat()
        except OSError:
            return None
        return (found.st_ino, found.st_size, found.st_mtime_ns)

    def _load(self, binding: blinding.PoolBinding) -> blinding.BlindingPool | None:
        """The stored pool for `binding` (caller holds the locks); None if absent or stale."""
        key = self._key(binding)
        pool = self._memory.get(key)
        path = self.path(binding)
        if path is not None:
            signature = self._signature(path)
            if signature is None:
                self._memory.pop(key, None)
                return None
            if pool is None or self._seen.get(path) != signature:
                try:
                    pool = decode_pool_file(path.read_bytes())
                except (OSError, blinding.MalformedPool):
                    return None  # a damaged pool is never trusted; prepare makes a new one
                self._memory[key], self._seen[path] = pool, signature
        if pool is None or pool.binding != binding:
            return None  # another blinding point under the same epoch id: unusable
        return pool

    def _store(self, pool: blinding.BlindingPool) -> None:
        """Persist the pool's unspent entries, then remember it (caller holds the lock)."""
        path = self.path(pool.binding)
        unspent = pool.unspent()
        if path is not None:
            self._ensure_directory()
            _write_private(path, encode_pool_file(unspent))
            signature = self._signature(path)
            assert signature is not None
            self._seen[path] = signature
        self._memory[self._key(pool.binding)] = unspent

    def remaining(self, binding: blinding.PoolBinding) -> int:
        """Unspent entries stored for `binding` (0 when none or stale)."""
        with self._locked():
            pool = self._load(binding)
            return pool.remaining if pool is not None else 0

    def prepare(
        self, binding: blinding.PoolBinding, count: int, *, workers: int | None = None
    ) -> int:
        """Top the pool for `binding` up to at least `count` entries; the entries now stored."""
        with self._locked():
            pool = self._load(binding)
        have = pool.remaining if pool is not None else 0
        if have >= count:
            return have
        fresh = blinding.prepare_pool(binding, count - have, workers=workers)
        if self.directory is not None:
            self._ensure_directory()
        with self._locked():
            pool = self._load(binding)  # another thread may have spent some meanwhile
            merged = pool.extended(fresh) if pool is not None else fresh
            self._store(merged)
            self.forget_other_epochs(binding)
            return merged.remaining

    def take(self, binding: blinding.PoolBinding, count: int) -> blinding.BlindingPool | None:
        """`count` entries for `binding`, already removed from disk; None if too few are stored.

        The returned pool holds exactly the entries to spend, for ``blinding.blind``.
        If the rewrite fails, the error propagates and nothing is handed out.
        """
        with self._locked():
            pool = self._load(binding)
            if pool is None or pool.remaining < count:
                return None
            entries = pool.take(count)
            self._store(pool)  # the remaining entries, before any point is sent
        return blinding.BlindingPool(binding, entries)

    def forget_other_epochs(self, binding: blinding.PoolBinding) -> None:
        """Delete stored pools of the same node and dataset under other epochs or points."""
        for key in [k for k in self._memory if k[:2] == self._key(binding)[:2]]:
            if self._memory[key].binding != binding:
                del self._memory[key]
        if self.directory is None or not self.directory.is_dir():
            return
        for path in self.directory.glob(f"*{POOL_SUFFIX}"):
            try:
                other = blinding.pool_binding_from_bytes(path.read_bytes()[_DIGEST_BYTES:4096])
            except (OSError, blinding.MalformedPool):
                continue
            if (other.node, other.dataset) == (binding.node, binding.dataset) and other != binding:
                with contextlib.suppress(OSError):
                    path.unlink()


@dataclass(frozen=True)
class PreparedPool:
    """What `prepare_pools` did for one node: entries stored, or why the node was refused."""

    node: str
    status: NodeStatus
    entries: int = 0
    epoch_id: str = ""
    reason: str = ""

    def line(self) -> str:
        if self.status == NodeStatus.OK:
            return f"{self.node}: {self.entries:,} entries for epoch {self.epoch_id}"
        return f"{self.node}: {self.status}: {self.reason}"


@dataclass(frozen=True)
class PreparedPools:
    """The outcome of ``prepare``: per node, entries stored or why it was refused."""

    dataset: str
    items: int
    results: tuple[PreparedPool, ...]

    @property
    def complete(self) -> bool:
        """Every node's pool now holds at least the entries asked for."""
        return all(r.status == NodeStatus.OK and r.entries >= self.items for r in self.results)

    def render(self) -> str:
        """One line per node, as ``fedtrace query prepare`` prints them."""
        return "".join(f"{result.line()}\n" for result in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "items": self.items,
            "nodes": [
                {
                    "node": r.node,
                    "status": str(r.status),
                    "entries": r.entries,
                    "epoch_id": r.epoch_id,
                    "reason": r.reason,
                }
                for r in self.results
            ],
        }


def prepare_pools(
    federation: Federation,
    dataset: str,
    items: int,
    connections: Connections,
    ca_pem: bytes,
    store: PoolStore,
    *,
    nodes: Sequence[NodeEntry] | None = None,
    progress: Progress | None = None,
    revoked: RevocationList | None = None,
    workers: int | None = None,
) -> PreparedPools:
    """Verify each node's blinding point and top its pool up to `items` entries (all cores)."""
    if items < 0:
        raise ValueError(f"cannot prepare {items} entries")
    entries = list(nodes or federation.nodes)
    report = progress or silent
    trust = NodeTrust(ca_pem, revoked)
    deadline = Deadline.after(federation.deadline_seconds)

    def announced(entry: NodeEntry, connection: NodeConnection) -> blinding.PoolBinding:
        info, _ = checked_info(entry, connection, deadline, trust, report)
        return verified_binding(entry.name, dataset_info(entry, info, dataset))

    results = []
    outcomes = fan_out(entries, connections, deadline, announced, report, report_status=False)
    for outcome in outcomes:  # pools are prepared one node at a time, each on every core
        if outcome.failure is not None or outcome.value is None:
            failure = outcome.failure
            reason = failure.reason if failure is not None else "no answer"
            status = failure.status if failure is not None else NodeStatus.ERROR
            results.append(PreparedPool(outcome.entry.name, status, reason=reason))
            continue
        binding = outcome.value
        report(outcome.entry.name, f"preparing {items:,} blinding entries")
        stored = store.prepare(binding, items, workers=workers)
        report(outcome.entry.name, f"{stored:,} blinding entries ready")
        results.append(PreparedPool(binding.node, NodeStatus.OK, stored, binding.epoch_id))
    return PreparedPools(dataset, items, tuple(results))
