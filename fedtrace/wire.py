"""The vocabulary both sides of the wire share: levels, node statuses, metadata keys, sizes.

Everything here is derived from, or sized for, the proto contract in
`protos/fedtrace/v1/`: a node and a coordinator that import these names cannot
disagree on what a disclosure level is called, how many points a message holds, or
which trailer carries the renewal time of an exhausted limit.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator

from fedtrace.errors import ConfigError
from fedtrace.v1 import node_pb2

# A gRPC message never exceeds this; both the node's server and the coordinator's channels set it.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# Points (32 bytes) or fixed-size records per streamed message: 2 MiB of points, half the limit.
POINTS_PER_BATCH = 65_536
# Filter and position-tag bytes per streamed message.
CHUNK_BYTES = 1 << 20

# The free-text fields of every QueryContext, bounded alike on both sides: the coordinator
# refuses a bad value before sending it, the node before anything is written (docs/reports.md).
CASE_REF_MAX = 64
CASE_REF = re.compile(rf"[A-Za-z0-9._/-]{{1,{CASE_REF_MAX}}}")  # use with fullmatch
LEGAL_BASIS_MAX = 32
LEGAL_BASIS = re.compile(rf"[A-Za-z0-9._-]{{1,{LEGAL_BASIS_MAX}}}")  # compared upper-cased

# Trailing metadata on a RESOURCE_EXHAUSTED refusal: when the exhausted limit renews (UTC).
RENEWS_AT_METADATA = "fedtrace-renews-at"
RENEWS_AT_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Level(enum.IntEnum):
    """Disclosure levels, lowest first; each value is the proto enum `fedtrace.v1.Disclosure`."""

    CARDINALITY = node_pb2.CARDINALITY
    AGGREGATE = node_pb2.AGGREGATE
    MEMBERSHIP = node_pb2.MEMBERSHIP
    DISCLOSURE_REQUEST = node_pb2.DISCLOSURE_REQUEST
    OVERLAP = node_pb2.OVERLAP

    @property
    def label(self) -> str:
        """The name policies, reports and the CLI use: `disclosure-request`, `membership`, …"""
        return self.name.lower().replace("_", "-")

    @property
    def wire(self) -> node_pb2.Disclosure.ValueType:
        return node_pb2.Disclosure.ValueType(int(self))

    @classmethod
    def from_label(cls, text: str) -> Level | None:
        return next((level for level in cls if level.label == text), None)

    @classmethod
    def parse(cls, text: str, where: str) -> Level:
        """The level a label names, or a ConfigError that lists the labels."""
        level = cls.from_label(text)
        if level is None:
            labels = ", ".join(level.label for level in cls)
            raise ConfigError(f"{where}: unknown disclosure level {text!r}; use one of {labels}")
        return level

    @classmethod
    def from_wire(cls, value: int) -> Level | None:
        """The level of a proto value, or None for DISCLOSURE_UNSPECIFIED and unknown values."""
        try:
            return cls(value)
        except ValueError:
            return None


# Levels at which a node answers a match query, and what each implies for the answer.
MATCH_LEVELS = (Level.CARDINALITY, Level.AGGREGATE, Level.MEMBERSHIP, Level.DISCLOSURE_REQUEST)


class NodeStatus(enum.StrEnum):
    """How one node's part of a query ended, as every report and the JSON output say it."""

    OK = "ok"
    DENIED = "denied"  # the node's policy refuses (no grant, limit, exhausted budget)
    UNAVAILABLE = "unavailable"  # no answer within the deadline, or the node is down
    ERROR = "error"  # the node answered with an error, or its answer did not verify


def batched(blob: bytes, record_bytes: int, per_batch: int = POINTS_PER_BATCH) -> Iterator[bytes]:
    """Cut a concatenation of fixed-size records into message payloads of `per_batch` at most.

    An empty blob yields nothing; a blob that is not a whole number of records is a bug
    in the caller and raises ValueError.
    """
    if record_bytes <= 0 or per_batch <= 0:
        raise ValueError("record size and batch size must be positive")
    if len(blob) % record_bytes:
        raise ValueError(f"{len(blob)} bytes is not a whole number of {record_bytes}-byte records")
    step = record_bytes * per_batch
    for start in range(0, len(blob), step):
        yield blob[start : start + step]
