"""What the coordinator keeps per node epoch: match filters and aggregate position tags.

Both are public per epoch, large, and the same for every query until the node
starts a new epoch, so they are kept in memory and, between runs, on disk under
``$FEDTRACE_CACHE_DIR`` (default ``~/.cache/fedtrace``). A cache file is named by
the SHA-256 of (node, dataset, epoch): nothing a node sends becomes part of a path.
Epoch ids from nodes are checked first (hex, at most 64 characters).

A partitioned epoch (`fedtrace.partitions`) is kept as one directory per epoch,
``<cache>/<sha256(node, dataset, epoch)>/``, holding ``p<NNNN>.gcs`` per
partition (0600 files in a 0700 directory). `fetch_partitions` asks the node for
every partition, whichever the query needs, so the fetches say nothing of the
watchlist: up to `PARTITION_FETCHES` at once over the node's one connection, each
written to ``p<NNNN>.part`` as it arrives and renamed to ``p<NNNN>.gcs`` once its
SHA-256 checks. A download cut off resumes from where its ``.part`` file ends at
the next query; a partition whose digest does not check is deleted and fetched
again once. Membership tests load only the partitions the query's points fall
into, a few at a time (`PARTITIONS_IN_MEMORY`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from coordinator.progress import Progress
from coordinator.results import NodeFailure
from coordinator.transport import NodeConnection
from fedtrace import gcs
from fedtrace.aggregate import TAG_BYTES
from fedtrace.partitions import (
    MAX_PARTITION_BITS,
    PartitionedFilter,
    partition_count,
    partitioned_filter_sha256,
)
from fedtrace.v1 import node_pb2
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
    # Partitioned epochs: one directory per epoch beside the single filters.
    partitions: PartitionCache = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.partitions = PartitionCache(self.directory)

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


# --- Partitioned epochs --------------------------------------------------------------

PARTITION_FETCHES = 4  # partitions in flight per node, over its one connection
PARTITIONS_IN_MEMORY = 4  # decoded partitions kept for the next membership test
FILTER_KIND = "gcs-v1"
_PART_MAGIC = b"FTP1"
# magic, item count, remainder bits, size and SHA-256 of the whole partition's data
_PART_HEADER = struct.Struct(">4sQIQ32s")
_READ_BLOCK = 1 << 20


@dataclass(frozen=True)
class PartitionHeader:
    """What the node announced for one partition: enough to check and decode its data."""

    item_count: int
    remainder_bits: int
    total_bytes: int
    sha256: bytes

    @staticmethod
    def of(header: node_pb2.FilterHeader) -> PartitionHeader:
        return PartitionHeader(
            header.item_count, header.remainder_bits, header.total_bytes, bytes(header.sha256)
        )

    def encode(self) -> bytes:
        return _PART_HEADER.pack(
            _PART_MAGIC, self.item_count, self.remainder_bits, self.total_bytes, self.sha256
        )

    @staticmethod
    def decode(blob: bytes) -> PartitionHeader | None:
        if len(blob) < _PART_HEADER.size:
            return None
        magic, count, bits, total, digest = _PART_HEADER.unpack_from(blob)
        return PartitionHeader(count, bits, total, digest) if magic == _PART_MAGIC else None


def partition_file_name(partition: int, suffix: str) -> str:
    """``p<NNNN><suffix>``: the partition number in four hex digits (16 bits at most)."""
    return f"p{partition:04x}{suffix}"


class PartitionStorage:
    """Where one epoch's partitions are kept while and after they arrive (base: in memory).

    A partition is partial (some of its data, and the header it was announced with)
    until `finish` checks its digest and makes it complete.
    """

    def __init__(self) -> None:
        self._partial: dict[int, tuple[PartitionHeader, bytearray]] = {}
        self._complete: dict[int, tuple[PartitionHeader, bytes]] = {}

    def header(self, partition: int) -> PartitionHeader | None:
        """The header of a complete partition, or None."""
        found = self._complete.get(partition)
        return found[0] if found else None

    def resume_point(self, partition: int) -> tuple[PartitionHeader | None, int]:
        """The header a partial download began with and how many data bytes it holds."""
        found = self._partial.get(partition)
        return (found[0], len(found[1])) if found else (None, 0)

    def begin(self, partition: int, header: PartitionHeader) -> None:
        self._partial[partition] = (header, bytearray())

    def append(self, partition: int, data: bytes) -> None:
        self._partial[partition][1].extend(data)

    def finish(self, partition: int) -> bool:
        """Complete the partition if its data checks against its header, else discard it."""
        header, data = self._partial.pop(partition)
        if len(data) != header.total_bytes or hashlib.sha256(data).digest() != header.sha256:
            return False
        self._complete[partition] = (header, bytes(data))
        return True

    def close(self, partition: int) -> None:
        """Release what an interrupted or finished download holds open (nothing here)."""

    def discard(self, partition: int) -> None:
        self._partial.pop(partition, None)
        self._complete.pop(partition, None)

    def data(self, partition: int) -> bytes:
        return self._complete[partition][1]


class DiskPartitions(PartitionStorage):
    """An epoch's partitions as files: ``p<NNNN>.part`` while arriving, ``p<NNNN>.gcs`` after.

    Each file starts with the partition's header (`PartitionHeader.encode`), then the
    data as it arrived; a resumed download asks for the data from the ``.part`` file's
    data length on.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory
        self._open: dict[int, int] = {}

    def path(self, partition: int, suffix: str) -> Path:
        return self.directory / partition_file_name(partition, suffix)

    def _prepare(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)

    def _read_header(self, path: Path) -> PartitionHeader | None:
        try:
            with path.open("rb") as file:
                return PartitionHeader.decode(file.read(_PART_HEADER.size))
        except OSError:
            return None

    def header(self, partition: int) -> PartitionHeader | None:
        return self._read_header(self.path(partition, ".gcs"))

    def resume_point(self, partition: int) -> tuple[PartitionHeader | None, int]:
        path = self.path(partition, ".part")
        header = self._read_header(path)
        if header is None:
            return None, 0
        return header, path.stat().st_size - _PART_HEADER.size

    def begin(self, partition: int, header: PartitionHeader) -> None:
        self._prepare()
        fd = os.open(self.path(partition, ".part"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, header.encode())
        self._open[partition] = fd

    def append(self, partition: int, data: bytes) -> None:
        fd = self._open.get(partition)
        if fd is None:
            fd = os.open(self.path(partition, ".part"), os.O_WRONLY | os.O_APPEND)
            self._open[partition] = fd
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]

    def close(self, partition: int) -> None:
        fd = self._open.pop(partition, None)
        if fd is not None:
            os.close(fd)

    def finish(self, partition: int) -> bool:
        self.close(partition)
        part = self.path(partition, ".part")
        header = self._read_header(part)
        digest = hashlib.sha256()
        size = 0
        with part.open("rb") as file:
            file.seek(_PART_HEADER.size)
            while block := file.read(_READ_BLOCK):
                digest.update(block)
                size += len(block)
        if header is None or size != header.total_bytes or digest.digest() != header.sha256:
            part.unlink(missing_ok=True)
            return False
        part.replace(self.path(partition, ".gcs"))
        return True

    def discard(self, partition: int) -> None:
        self.close(partition)
        for suffix in (".part", ".gcs"):
            self.path(partition, suffix).unlink(missing_ok=True)

    def data(self, partition: int) -> bytes:
        with self.path(partition, ".gcs").open("rb") as file:
            file.seek(_PART_HEADER.size)
            return file.read()


@dataclass
class PartitionCache:
    """Partitioned epochs by (node, dataset, epoch): their storage and a few decoded partitions."""

    directory: Path | None
    _storage: dict[EpochKey, PartitionStorage] = field(default_factory=dict)
    _decoded: OrderedDict[tuple[EpochKey, int], gcs.GolombFilter] = field(
        default_factory=OrderedDict
    )
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def storage(self, key: EpochKey) -> PartitionStorage:
        with self._lock:
            found = self._storage.get(key)
            if found is None:
                if self.directory is None:
                    found = PartitionStorage()
                else:
                    found = DiskPartitions(self.directory / cache_file_name(key, ""))
                self._storage[key] = found
            return found

    def load(self, node: str, key: EpochKey, partition: int) -> gcs.GolombFilter:
        """Partition ``partition`` decoded; a malformed one is deleted and fails the node."""
        with self._lock:
            found = self._decoded.get((key, partition))
            if found is not None:
                self._decoded.move_to_end((key, partition))
                return found
        storage = self.storage(key)
        header = storage.header(partition)
        try:
            if header is None:
                raise ValueError("it is missing from the cache")
            filter_ = gcs.GolombFilter.from_bytes(
                header.item_count, header.remainder_bits, storage.data(partition)
            )
        except (OSError, ValueError) as exc:
            storage.discard(partition)
            raise NodeFailure(
                NodeStatus.ERROR, f"{node}'s filter partition {partition} is unusable: {exc}"
            ) from None
        with self._lock:
            self._decoded[(key, partition)] = filter_
            while len(self._decoded) > PARTITIONS_IN_MEMORY:
                self._decoded.popitem(last=False)
        return filter_


def fetch_partitions(
    node: str,
    connection: NodeConnection,
    key: EpochKey,
    bits: int,
    cache: PartitionCache,
    timeout: Callable[[], float],
    report: Progress,
) -> tuple[PartitionedFilter, str]:
    """Every partition of a partitioned epoch in the cache (fetching what is missing), and
    the filter digest the node's transcript names (`partitioned_filter_sha256`)."""
    _, dataset, epoch_id = key
    if not 0 < bits <= MAX_PARTITION_BITS:
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node} announced {bits} filter partition bits; at most {MAX_PARTITION_BITS}",
        )
    storage = cache.storage(key)
    total = partition_count(bits)
    missing = [p for p in range(total) if storage.header(p) is None]
    if missing:
        done = total - len(missing)
        report(node, f"fetching filter partitions: {done:,}/{total:,}")
        reported = threading.Lock()

        def fetch(partition: int) -> None:
            nonlocal done
            request = node_pb2.GetFilterRequest(
                dataset=dataset, epoch_id=epoch_id, partition=partition
            )
            _fetch_partition(node, connection, request, bits, storage, timeout)
            cache.load(node, key, partition)  # a malformed partition fails before any query
            with reported:
                done += 1
                report(node, f"fetching filter partitions: {done:,}/{total:,}")

        with ThreadPoolExecutor(max_workers=min(PARTITION_FETCHES, len(missing))) as pool:
            futures = [pool.submit(fetch, p) for p in missing]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    headers = [storage.header(p) for p in range(total)]
    widths = {h.remainder_bits for h in headers if h is not None}
    if any(h is None for h in headers) or len(widths) != 1:
        raise NodeFailure(NodeStatus.ERROR, f"{node}'s filter partitions do not agree")
    digest = partitioned_filter_sha256(bits, [h.sha256 for h in headers if h is not None])
    partitioned = PartitionedFilter(
        bits, widths.pop(), lambda partition: cache.load(node, key, partition)
    )
    return partitioned, digest.hex()


def _fetch_partition(
    node: str,
    connection: NodeConnection,
    request: node_pb2.GetFilterRequest,
    bits: int,
    storage: PartitionStorage,
    timeout: Callable[[], float],
) -> None:
    """One partition into `storage`, resuming a partial download; a partition whose digest
    does not check is deleted and fetched once more from its start."""
    partition = request.partition
    for _ in range(2):
        announced, offset = storage.resume_point(partition)
        if announced is None or offset > announced.total_bytes:
            announced, offset = None, 0
        try:
            received = _receive(
                node, connection, request, bits, storage, announced, offset, timeout
            )
        finally:
            storage.close(partition)
        if received and storage.finish(partition):
            return
        storage.discard(partition)
    raise NodeFailure(
        NodeStatus.ERROR, f"{node}'s filter partition {partition} arrived damaged (size or digest)"
    )


def _receive(
    node: str,
    connection: NodeConnection,
    request: node_pb2.GetFilterRequest,
    bits: int,
    storage: PartitionStorage,
    announced: PartitionHeader | None,
    offset: int,
    timeout: Callable[[], float],
) -> bool:
    """Receive the partition's data from `offset` on into `storage`; False when the partial
    download held was announced differently (it must start over)."""
    partition = request.partition
    asked = node_pb2.GetFilterRequest()
    asked.CopyFrom(request)
    asked.offset = offset
    chunks = connection.filter(asked, timeout())
    first = next(chunks, None)
    if first is None or first.WhichOneof("part") != "header":
        raise NodeFailure(NodeStatus.ERROR, f"{node} sent a filter partition without its header")
    header = first.header
    if (
        header.filter_kind != FILTER_KIND
        or header.epoch_id != request.epoch_id
        or header.partition != partition
        or header.partition_bits != bits
        or header.offset != offset
    ):
        raise NodeFailure(
            NodeStatus.ERROR,
            f"{node} sent {header.filter_kind!r} partition {header.partition} of "
            f"{1 << min(header.partition_bits, 32)} from byte {header.offset} for epoch "
            f"{header.epoch_id!r}; expected {FILTER_KIND} partition {partition} of "
            f"{partition_count(bits)} from byte {offset}, epoch {request.epoch_id}",
        )
    received = PartitionHeader.of(header)
    if announced is not None and received != announced:
        return False  # what is held is not the partition announced now
    if offset == 0:
        storage.begin(partition, received)
    written = offset
    for chunk in chunks:
        written += len(chunk.data)
        if written > received.total_bytes:
            storage.discard(partition)
            raise NodeFailure(NodeStatus.ERROR, f"{node} sent more filter bytes than announced")
        storage.append(partition, chunk.data)
    return True
