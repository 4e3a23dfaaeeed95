"""The datasets each node of a federation announced, kept between runs to check `--dataset` locally.

A node announces its datasets in its GetInfo answer. The catalogue keeps those
names per federation — on disk under ``<cache>/federations/`` (coordinator.epoch_cache
`cache_base`), one JSON file named by the SHA-256 of FED.toml's resolved path —
and per node together with the address it answered at, so a node that moved is
asked again. `require_dataset` checks a query's dataset against the nodes it
selects: from the kept names when one of them offers it (no network), otherwise
after asking those nodes again (a node may have added the dataset since). Nodes
that do not answer keep their last announcement; when no node has ever answered
the check is left to the query, whose report says why each node failed.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from coordinator.checks import check_dataset
from coordinator.epoch_cache import cache_base
from coordinator.federation import Federation, NodeEntry
from coordinator.progress import Progress, silent
from coordinator.transport import Connections

INFO_TIMEOUT_SECONDS = 10.0
MAX_DATASETS = 256
_DATASET = re.compile(r"^[a-z][a-z0-9_]{0,62}$")  # what a node accepts as a dataset name


@dataclass(frozen=True)
class Announcement:
    """One node's datasets, as it announced them at `address`."""

    address: str
    datasets: tuple[str, ...]


@dataclass
class DatasetCatalogue:
    """Announced datasets per node of one federation: in memory, and in `path` between runs."""

    path: Path | None
    _nodes: dict[str, Announcement] = field(default_factory=dict)
    _loaded: bool = False

    @staticmethod
    def default(federation: Federation) -> DatasetCatalogue:
        key = hashlib.sha256(str(federation.path.resolve()).encode("utf-8")).hexdigest()
        return DatasetCatalogue(cache_base() / "federations" / f"{key}.json")

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if self.path is None:
            return
        try:
            document = json.loads(self.path.read_text(encoding="utf-8"))
            nodes = document["nodes"]
            for name, entry in nodes.items():
                datasets = tuple(d for d in entry["datasets"] if _DATASET.match(str(d)))
                self._nodes[str(name)] = Announcement(str(entry["address"]), datasets)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            self._nodes.clear()  # a missing or damaged file: ask the nodes again

    def _save(self) -> None:
        if self.path is None:
            return
        document = {
            "nodes": {
                name: {"address": a.address, "datasets": list(a.datasets)}
                for name, a in sorted(self._nodes.items())
            }
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}.tmp")
            tmp.write_text(json.dumps(document, indent=1), encoding="utf-8")
            tmp.replace(self.path)
        except OSError:
            pass  # the catalogue only saves a GetInfo call; a read-only cache costs nothing else

    def known(self, entries: Sequence[NodeEntry]) -> dict[str, tuple[str, ...]]:
        """The datasets of each selected node whose announcement at its address is kept."""
        self._load()
        out = {}
        for entry in entries:
            announced = self._nodes.get(entry.name)
            if announced is not None and announced.address == entry.address:
                out[entry.name] = announced.datasets
        return out

    def refresh(
        self,
        entries: Sequence[NodeEntry],
        connections: Connections,
        timeout: float = INFO_TIMEOUT_SECONDS,
    ) -> None:
        """Ask the selected nodes for their info, concurrently; keep what those that answer say."""
        self._load()

        def ask(entry: NodeEntry) -> tuple[NodeEntry, tuple[str, ...] | None]:
            try:
                info = connections(entry).info(timeout)
            except grpc.RpcError:
                return entry, None
            names = [d.name for d in info.datasets[:MAX_DATASETS] if _DATASET.match(d.name)]
            return entry, tuple(names)

        with ThreadPoolExecutor(max_workers=max(1, len(entries))) as pool:
            answers = list(pool.map(ask, entries))
        changed = False
        for entry, datasets in answers:
            if datasets is not None:
                self._nodes[entry.name] = Announcement(entry.address, datasets)
                changed = True
        if changed:
            self._save()


def require_dataset(
    catalogue: DatasetCatalogue,
    dataset: str,
    entries: Sequence[NodeEntry],
    connections: Connections,
    timeout: float = INFO_TIMEOUT_SECONDS,
    progress: Progress = silent,
) -> None:
    """Nothing when a selected node offers `dataset` (or none can say); else QueryUsageError."""
    if any(dataset in names for names in catalogue.known(entries).values()):
        return
    progress("*", "asking the nodes which datasets they offer")
    catalogue.refresh(entries, connections, timeout)
    known = catalogue.known(entries)
    if not known:
        return  # no node ever answered: the query reports why each one failed
    check_dataset(dataset, sorted({name for names in known.values() for name in names}))
