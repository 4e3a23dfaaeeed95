"""FED.toml: the investigator's identity and the roster of nodes, parsed into frozen values.

``[investigator] legal_bases = ["CODE", …]`` adds legal-basis codes to the known
ones (coordinator.checks.KNOWN_LEGAL_BASES) that `--legal-basis` is checked against.
``[[monitor]] name = "OVS", cert = "monitors/ovs.pem"`` names a monitor whose sealed
openings a node's grant may demand; its certificate must chain to the federation CA,
carry the monitor role and that name, and not be revoked (checked when loading).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from coordinator.checks import check_legal_bases
from fedtrace.errors import ConfigError, FedtraceError
from fedtrace.pki import ROLE_MONITOR, verify_issued_by
from fedtrace.revocation import load_revocations
from fedtrace.tomlconfig import TableReader, load_toml


@dataclass(frozen=True)
class NodeEntry:
    name: str  # jurisdiction code, checked against the node's certificate
    address: str


@dataclass(frozen=True)
class MonitorEntry:
    name: str  # as the monitor's certificate names it (CN)
    cert: Path
    certificate_pem: bytes


@dataclass(frozen=True)
class Federation:
    path: Path
    investigator: str
    cert: Path
    key: Path
    ca: Path
    nodes: tuple[NodeEntry, ...]
    deadline_seconds: float
    revoked: Path | None = None  # the federation's revocation list (fedtrace.revocation)
    legal_bases: tuple[str, ...] = ()  # legal-basis codes known beyond the built-in ones
    monitors: tuple[MonitorEntry, ...] = ()  # whose sealed openings grants may demand

    def monitor(self, name: str) -> MonitorEntry | None:
        return next((m for m in self.monitors if m.name == name), None)

    def select(self, names: tuple[str, ...] | None) -> tuple[NodeEntry, ...]:
        if not names:
            return self.nodes
        known = {n.name: n for n in self.nodes}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"--nodes names {', '.join(unknown)}, not in {self.path} "
                f"(it lists {', '.join(known) or 'no nodes'})"
            )
        return tuple(known[n] for n in names)


def load_federation(path: Path) -> Federation:
    top = TableReader(
        load_toml(path, "federation file"),
        str(path),
        ("investigator", "node", "query", "monitor"),
    )
    base = path.parent
    inv = TableReader(
        top.required("investigator", dict),
        f"{path} [investigator]",
        ("name", "cert", "key", "ca", "revoked", "legal_bases"),
    )
    query = TableReader(top.optional("query", dict, {}), f"{path} [query]", ("deadline_seconds",))
    nodes = []
    for i, table in enumerate(top.tables("node")):
        entry = TableReader(table, f"{path} [[node]] #{i + 1}", ("name", "address"))
        nodes.append(
            NodeEntry(name=entry.required("name", str), address=entry.required("address", str))
        )
        entry.finish()
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: node names must be unique, got {', '.join(names)}")
    federation = Federation(
        path=path,
        investigator=inv.required("name", str),
        cert=base / inv.required("cert", str),
        key=base / inv.required("key", str),
        ca=base / inv.required("ca", str),
        nodes=tuple(nodes),
        deadline_seconds=query.optional("deadline_seconds", float, 120.0),
        revoked=base / inv.optional("revoked", str, "") if inv.has("revoked") else None,
        legal_bases=check_legal_bases(inv.string_list("legal_bases"), f"{path} [investigator]"),
    )
    if top.has("monitor"):
        federation = replace(federation, monitors=_monitors(path, top, federation))
    for reader in (inv, query, top):
        reader.finish()
    if not federation.nodes:
        raise ConfigError(f"{path}: no [[node]] entries; add one per partner node")
    return federation


def _monitors(path: Path, top: TableReader, federation: Federation) -> tuple[MonitorEntry, ...]:
    """The [[monitor]] tables, each certificate checked against the federation CA."""
    monitors = []
    for i, table in enumerate(top.tables("monitor")):
        where = f"{path} [[monitor]] #{i + 1}"
        entry = TableReader(table, where, ("name", "cert"))
        name, cert = entry.required("name", str), path.parent / entry.required("cert", str)
        entry.finish()
        try:
            pem = cert.read_bytes()
            ca_pem = federation.ca.read_bytes()
            identity = verify_issued_by(pem, ca_pem)
            revoked = (
                load_revocations(federation.revoked, ca_pem=ca_pem).find(identity)
                if federation.revoked is not None
                else None
            )
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {exc.filename}: {exc.strerror}") from None
        except FedtraceError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if identity.role != ROLE_MONITOR or identity.jurisdiction != name:
            raise ConfigError(
                f"{where}: {cert} names {identity.jurisdiction} {identity.role}, not monitor "
                f"{name}; issue one with 'fedtrace pki issue CA_DIR OUT --name {name} "
                "--role monitor'"
            )
        if revoked is not None:
            raise ConfigError(f"{where}: the federation revoked monitor {name}'s certificate")
        monitors.append(MonitorEntry(name, cert, pem))
    names = [m.name for m in monitors]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: monitor names must be unique, got {', '.join(names)}")
    return tuple(monitors)
