"""A monitor-export directory read into typed values (`fedtrace node monitor-export` writes it).

Layout: ``manifest.json`` (node, monitor, time of export, count), ``queries.jsonl``
(one canonical JSON document per sealed query, everything the monitor needs to
judge it) and ``tags/<dataset>-<epoch>.bin`` (the position tags of each aggregate
epoch). Nothing here opens or checks a seal; a malformed export is an
``ExportError`` naming the file and line, so the command reports it in one line.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtrace.errors import FedtraceError

MANIFEST_FILE = "manifest.json"
QUERIES_FILE = "queries.jsonl"
TAGS_DIR = "tags"
EXPORT_VERSION = 1


class ExportError(FedtraceError):
    """The directory is not a readable monitor export (usage error: nothing was checked)."""


@dataclass(frozen=True)
class ExportedQuery:
    """One sealed query as the node stored it: the seal, what it received and answered."""

    audit_seq: int
    time: str
    partner: str
    case_ref: str
    kind: str
    dataset: str
    epoch_id: str
    statement: bytes
    signature: bytes
    enc: bytes
    ciphertext: bytes
    investigator_cert_pem: bytes
    received_points: bytes
    answer_points: bytes
    indicator_ciphertexts: tuple[bytes, ...]
    blinding_point: bytes
    node_points_sha256: str
    opening_sha256: str

    def moment(self) -> dt.datetime | None:
        """``time`` as an aware date-time, or None when the node wrote something else."""
        try:
            moment = dt.datetime.fromisoformat(self.time.replace("Z", "+00:00"))
        except ValueError:
            return None
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class MonitorExport:
    """A whole export: its manifest, its queries in file order and where its tags are."""

    directory: Path
    node: str
    monitor: str
    exported_at: str
    queries: tuple[ExportedQuery, ...]

    def tags(self, dataset: str, epoch_id: str) -> bytes | None:
        """The exported position tags of one aggregate epoch, or None if absent."""
        name = f"{dataset}-{epoch_id}.bin"
        if "/" in name or "\\" in name or name.startswith("."):
            return None
        path = self.directory / TAGS_DIR / name
        try:
            return path.read_bytes()
        except OSError:
            return None


_TEXT = ("time", "partner", "case_ref", "kind", "dataset", "epoch_id")
_HEX = ("statement", "signature", "enc", "ciphertext", "received_points")
_OPTIONAL_HEX = ("answer_points", "blinding_point")


def _hex(value: Any, where: str, key: str) -> bytes:
    if not isinstance(value, str):
        raise ExportError(f"{where}: {key} is not a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise ExportError(f"{where}: {key} is not hex") from None


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ExportError(f"{where}: {key} is missing or not a string")
    return value


def query_from_json(document: Any, where: str) -> ExportedQuery:
    """One ``queries.jsonl`` line, checked for every key the monitor reads."""
    if not isinstance(document, dict):
        raise ExportError(f"{where}: not a JSON object")
    seq = document.get("audit_seq")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ExportError(f"{where}: audit_seq is missing or not an integer")
    text = {key: _text(document.get(key), where, key) for key in _TEXT}
    blobs = {key: _hex(document.get(key), where, key) for key in _HEX}
    optional = {key: _hex(document.get(key) or "", where, key) for key in _OPTIONAL_HEX}
    cts = document.get("indicator_ciphertexts") or []
    if not isinstance(cts, list):
        raise ExportError(f"{where}: indicator_ciphertexts is not a list")
    cert = _text(document.get("investigator_cert_pem"), where, "investigator_cert_pem")
    return ExportedQuery(
        audit_seq=seq,
        time=text["time"],
        partner=text["partner"],
        case_ref=text["case_ref"],
        kind=text["kind"],
        dataset=text["dataset"],
        epoch_id=text["epoch_id"],
        statement=blobs["statement"],
        signature=blobs["signature"],
        enc=blobs["enc"],
        ciphertext=blobs["ciphertext"],
        investigator_cert_pem=cert.encode(),
        received_points=blobs["received_points"],
        answer_points=optional["answer_points"],
        indicator_ciphertexts=tuple(_hex(c, where, "indicator_ciphertexts") for c in cts),
        blinding_point=optional["blinding_point"],
        node_points_sha256=_text(
            document.get("node_points_sha256", ""), where, "node_points_sha256"
        ),
        opening_sha256=_text(document.get("opening_sha256", ""), where, "opening_sha256"),
    )


def read_export(directory: Path) -> MonitorExport:
    """Read ``directory``; ``ExportError`` (one line) when it is missing or malformed."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ExportError(f"{directory} is not a directory: give a `node monitor-export` output")
    manifest_path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExportError(
            f"{directory} holds no {MANIFEST_FILE}: not a `node monitor-export` output"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{manifest_path} is unreadable: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("v") != EXPORT_VERSION:
        raise ExportError(f"{manifest_path} is not a version {EXPORT_VERSION} monitor export")
    queries = []
    queries_path = directory / QUERIES_FILE
    try:
        lines = queries_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportError(f"{queries_path} is unreadable: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{queries_path}:{number}"
        try:
            document = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ExportError(f"{where}: not JSON ({exc.msg})") from None
        queries.append(query_from_json(document, where))
    count = manifest.get("count")
    if isinstance(count, int) and count != len(queries):
        raise ExportError(
            f"{manifest_path} announces {count} queries but {QUERIES_FILE} holds {len(queries)}"
        )
    return MonitorExport(
        directory=directory,
        node=str(manifest.get("node", "")),
        monitor=str(manifest.get("monitor", "")),
        exported_at=str(manifest.get("exported_at", "")),
        queries=tuple(queries),
    )
