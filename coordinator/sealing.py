"""Sealed openings on the coordinator: seal what was sent to each monitor a node's grant names.

A node lists, on each dataset it describes to us, the monitors its grants for us name
(`DatasetInfo.monitors`). For each, the coordinator signs a statement binding the exact
points (or indicator ciphertexts) it sends and seals the secrets behind them — the items
as hashed and the blinding, or the HE secret key and the indicator — to that monitor's
certificate from FED.toml ``[[monitor]]`` (`fedtrace.opening`). A monitor the node
demands but FED.toml lacks stops that node's query with a readable reason.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace

from coordinator.federation import Federation, MonitorEntry
from coordinator.results import NodeFailure
from fedtrace import opening
from fedtrace.he import SecretHeContext
from fedtrace.opening import Blinding, Opening, OpeningError, Statement
from fedtrace.pki import read_key_pem
from fedtrace.v1 import node_pb2
from fedtrace.wire import NodeStatus


class Sealer:
    """Seals openings for the monitors nodes demand, with the investigator's key (read once)."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._key_pem: bytes | None = None
        self._lock = threading.Lock()

    def _key(self) -> bytes:
        with self._lock:
            if self._key_pem is None:
                self._key_pem = read_key_pem(self._federation.key)
            return self._key_pem

    def monitors(self, node: str, dataset: node_pb2.DatasetInfo) -> list[MonitorEntry]:
        """The FED.toml monitors `node` demands on `dataset` (NodeFailure if one is missing)."""
        entries = []
        for name in dataset.monitors:
            entry = self._federation.monitor(name)
            if entry is None:
                raise NodeFailure(
                    NodeStatus.ERROR,
                    f"FED.toml names no monitor {name}, which {node}'s grant requires "
                    f"(add a [[monitor]] with its certificate to {self._federation.path})",
                )
            entries.append(entry)
        return entries

    def seal(
        self, monitors: Sequence[MonitorEntry], statement: Statement, secrets: Opening
    ) -> list[node_pb2.SealedOpening]:
        """One sealed opening per monitor, each statement naming its monitor."""
        sealed = []
        for monitor in monitors:
            try:
                sealed.append(
                    opening.seal(
                        replace(statement, monitor=monitor.name),
                        secrets,
                        opening.monitor_public_key(monitor.certificate_pem),
                        self._key(),
                    ).to_proto()
                )
            except OpeningError as exc:
                raise NodeFailure(
                    NodeStatus.ERROR, f"cannot seal the opening for {monitor.name}: {exc}"
                ) from None
        return sealed

    def points_openings(
        self,
        node: str,
        dataset: node_pb2.DatasetInfo,
        kind: str,
        epoch_id: str,
        context: node_pb2.QueryContext,
        investigator: str,
        points: Sequence[bytes],
        items: Sequence[bytes],
        secret: Blinding,
    ) -> list[node_pb2.SealedOpening]:
        """Openings of a match or an aggregate's round 1 (empty when no monitor is named)."""
        monitors = self.monitors(node, dataset)
        if not monitors:
            return []
        statement = points_statement(
            node, dataset.name, kind, epoch_id, context, investigator, points
        )
        return self.seal(monitors, statement, Opening(kind, items=tuple(items), blinding=secret))

    def aggregate_round_one(
        self,
        node: str,
        dataset: node_pb2.DatasetInfo,
        epoch_id: str,
        context: node_pb2.QueryContext,
        investigator: str,
        points: Sequence[bytes],
        items: Sequence[bytes],
        scalar: bytes,
    ) -> tuple[list[node_pb2.SealedOpening], IndicatorSealing | None]:
        """Round 1's openings, and what seals round 2's for the same monitors (None: none)."""
        monitors = self.monitors(node, dataset)
        if not monitors:
            return [], None
        kind = opening.KIND_AGGREGATE_POINTS
        statement = points_statement(
            node, dataset.name, kind, epoch_id, context, investigator, points
        )
        secrets = Opening(kind, items=tuple(items), blinding=multiplicative(scalar))
        sealed = self.seal(monitors, statement, secrets)
        return sealed, IndicatorSealing(self, node, tuple(monitors), statement)

    def indicator_openings(
        self,
        node: str,
        monitors: Sequence[MonitorEntry],
        round_one: Statement,
        indicators: Sequence[bytes],
        query_id: bytes,
        secret: SecretHeContext,
        row_count: int,
        positions: Sequence[int],
    ) -> list[node_pb2.SealedOpening]:
        """Openings of an aggregate's round 2: the HE secret key and the indicator sent."""
        if not monitors:
            return []
        statement = replace(
            round_one,
            kind=opening.KIND_AGGREGATE_INDICATOR,
            indicator_sha256=opening.indicator_digest(indicators),
            query_id=query_id,
        )
        secrets = Opening(
            opening.KIND_AGGREGATE_INDICATOR,
            he_secret_context=secret.secret_key_bytes(),
            indicator=opening.indicator_bitmap(row_count, positions),
            row_count=row_count,
            positions=tuple(positions),
        )
        return self.seal(monitors, statement, secrets)


@dataclass(frozen=True)
class IndicatorSealing:
    """Round 2's sealing for one node: its monitors and round 1's statement."""

    sealer: Sealer
    node: str
    monitors: tuple[MonitorEntry, ...]
    round_one: Statement

    def openings(
        self,
        indicators: Sequence[bytes],
        query_id: bytes,
        secret: SecretHeContext,
        row_count: int,
        positions: Sequence[int],
    ) -> list[node_pb2.SealedOpening]:
        return self.sealer.indicator_openings(
            self.node,
            self.monitors,
            self.round_one,
            indicators,
            query_id,
            secret,
            row_count,
            positions,
        )


def points_statement(
    node: str,
    dataset: str,
    kind: str,
    epoch_id: str,
    context: node_pb2.QueryContext,
    investigator: str,
    points: Sequence[bytes],
) -> Statement:
    """The statement over points sent (its monitor and opening digest filled in when sealing)."""
    return Statement(
        kind=kind,
        monitor="",
        node=node,
        dataset=dataset,
        epoch_id=epoch_id,
        case_ref=context.case_ref,
        legal_basis=context.legal_basis,
        investigator=investigator,
        nonce=bytes(context.nonce),
        timestamp_unix_ms=int(context.timestamp_unix_ms),
        item_count=len(points),
        points_sha256=opening.points_digest(points),
    )


def multiplicative(scalar: bytes) -> Blinding:
    return Blinding(opening.MODE_MULTIPLICATIVE, scalar=scalar)


def additive(blinding_point: bytes, masks: Sequence[bytes]) -> Blinding:
    return Blinding(opening.MODE_ADDITIVE, blinding_point=blinding_point, r=tuple(masks))
