"""node.toml: the node's own configuration, parsed once into frozen, validated values."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, replace
from pathlib import Path

from fedtrace.errors import ConfigError
from fedtrace.tomlconfig import TableReader, load_toml
from fedtrace.wire import MAX_MESSAGE_BYTES

NODE_FILE = "node.toml"
DATASET_KINDS = ("wallet", "person")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LISTEN = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


@dataclass(frozen=True)
class DatasetConfig:
    """A dataset: SQL over the node's tables yielding one row per identifier."""

    name: str
    kind: str  # "wallet": key_column holds canonical addresses; "person": name, DOB, document
    sql: str
    key_column: str
    aggregate_columns: tuple[str, ...]
    disclosable_columns: tuple[str, ...]


@dataclass(frozen=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path
    revoked: Path  # the federation's revocation list (fedtrace.revocation); may be absent


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int
    max_concurrent_queries: int
    max_items_per_request: int  # hard ceiling, whatever a policy grants
    # Of max_concurrent_queries, how many one partner may hold at once (0: half, at least 1).
    max_concurrent_per_partner: int = 0
    # Open aggregate round-1s one partner may hold (the node holds at most 64 in all).
    max_pending_aggregates_per_partner: int = 8
    # Seconds a query stream may take to send its first message (its header).
    first_message_seconds: float = 10.0

    @property
    def per_partner(self) -> int:
        """Concurrent queries one partner may hold."""
        if self.max_concurrent_per_partner > 0:
            return min(self.max_concurrent_per_partner, self.max_concurrent_queries)
        return max(1, self.max_concurrent_queries // 2)


#: `[compute] scheduler` values that are not an address.
OWN_POOL = ""  # the node's own process pool (fedtrace.parallel)
LOCAL_CLUSTER = "local"  # a Dask LocalCluster started for each build, one worker per core
SCHEDULER_SCHEMES = ("tcp", "tls")
_SCHEDULER = re.compile(
    r"^(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$"
)
_LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class ComputeConfig:
    """Where epochs are built: the node's own cores, a local or a remote Dask cluster."""

    scheduler: str = OWN_POOL  # "", "local", "tcp://127.0.0.1:8786" or "tls://host:8786"
    tls_ca: Path | None = None  # the cluster's CA, and this node's client certificate and key
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Items per partition: an epoch of n items has 2**ceil(log2(n / partition_items))
    # partitions, one (no partitioning) up to partition_items.
    partition_items: int = 1_000_000

    @property
    def uses_dask(self) -> bool:
        return self.scheduler != OWN_POOL


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_compute(compute: ComputeConfig, where: str) -> ComputeConfig:
    """``compute`` when its scheduler can carry an epoch's secret scalar; else ConfigError."""
    if compute.partition_items < 1:
        raise ConfigError(f"{where}: 'partition_items' must be at least 1")
    if compute.scheduler in (OWN_POOL, LOCAL_CLUSTER):
        return compute
    match = _SCHEDULER.match(compute.scheduler)
    if not match or match.group("scheme") not in SCHEDULER_SCHEMES:
        raise ConfigError(
            f'{where}: scheduler {compute.scheduler!r} must be "local", tls://HOST:PORT '
            "or (on this machine only) tcp://127.0.0.1:PORT"
        )
    tls_files = (compute.tls_ca, compute.tls_cert, compute.tls_key)
    if match.group("scheme") == "tcp" and not _is_loopback(match.group("host")):
        raise ConfigError(
            f"{where}: scheduler {compute.scheduler!r} is not on this machine and tcp:// is "
            "unencrypted: the epoch's secret scalar would cross the network in clear; "
            "use tls:// with tls_ca, tls_cert and tls_key"
        )
    if match.group("scheme") == "tls" and not all(tls_files):
        raise ConfigError(
            f"{where}: a tls:// scheduler needs tls_ca, tls_cert and tls_key (the cluster's "
            "CA and this node's client certificate and key)"
        )
    return compute


@dataclass(frozen=True)
class NodeConfig:
    node_dir: Path
    jurisdiction: str
    listen: str
    database: Path
    policy: Path
    epoch_hours: float
    tls: TlsConfig
    limits: Limits
    datasets: tuple[DatasetConfig, ...]
    compute: ComputeConfig = ComputeConfig()

    def dataset(self, name: str) -> DatasetConfig | None:
        return next((d for d in self.datasets if d.name == name), None)


def with_scheduler(config: NodeConfig, scheduler: str) -> NodeConfig:
    """``config`` with ``[compute] scheduler`` replaced (``node serve --scheduler``), checked."""
    compute = replace(config.compute, scheduler=scheduler)
    return replace(config, compute=check_compute(compute, "--scheduler"))


def parse_listen(text: str, where: str) -> tuple[str, int]:
    match = _LISTEN.match(text)
    if not match or not 0 <= int(match.group(2)) <= 65535:
        raise ConfigError(
            f"{where}: listen address {text!r} must be HOST:PORT, e.g. 127.0.0.1:7001"
        )
    return match.group(1), int(match.group(2))


def load_node_config(node_dir: Path) -> NodeConfig:
    path = node_dir / NODE_FILE
    if not path.exists():
        raise ConfigError(
            f"{node_dir}: no {NODE_FILE} here; create the node with "
            f"`fedtrace node init {node_dir} --jurisdiction CODE --ca CA_DIR`"
        )
    top = TableReader(
        load_toml(path, "node configuration"),
        str(path),
        (
            "jurisdiction",
            "listen",
            "database",
            "policy",
            "epoch_hours",
            "tls",
            "limits",
            "dataset",
            "compute",
        ),
    )
    jurisdiction = top.required("jurisdiction", str)
    listen = top.optional("listen", str, "127.0.0.1:7001")
    parse_listen(listen, str(path))
    epoch_hours = top.optional("epoch_hours", float, 24.0)
    if epoch_hours <= 0:
        raise ConfigError(f"{path}: 'epoch_hours' must be positive")

    tls_table = top.optional("tls", dict, {})
    tls = TableReader(tls_table, f"{path} [tls]", ("cert", "key", "ca", "revoked"))
    tls_config = TlsConfig(
        cert=node_dir / tls.optional("cert", str, "tls/cert.pem"),
        key=node_dir / tls.optional("key", str, "tls/key.pem"),
        ca=node_dir / tls.optional("ca", str, "tls/ca.pem"),
        revoked=node_dir / tls.optional("revoked", str, "tls/revoked.toml"),
    )
    tls.finish()

    limits_reader = TableReader(
        top.optional("limits", dict, {}),
        f"{path} [limits]",
        (
            "max_message_bytes",
            "max_concurrent_queries",
            "max_items_per_request",
            "max_concurrent_per_partner",
            "max_pending_aggregates_per_partner",
            "first_message_seconds",
        ),
    )
    limits = Limits(
        max_message_bytes=limits_reader.optional("max_message_bytes", int, MAX_MESSAGE_BYTES),
        max_concurrent_queries=limits_reader.optional("max_concurrent_queries", int, 8),
        max_items_per_request=limits_reader.optional("max_items_per_request", int, 2_000_000),
        max_concurrent_per_partner=limits_reader.optional("max_concurrent_per_partner", int, 0),
        max_pending_aggregates_per_partner=limits_reader.optional(
            "max_pending_aggregates_per_partner", int, 8
        ),
        first_message_seconds=limits_reader.optional("first_message_seconds", float, 10.0),
    )
    limits_reader.finish()
    if limits.max_message_bytes < 1024 * 1024 or limits.max_concurrent_queries < 1:
        raise ConfigError(f"{path} [limits]: message limit must be >= 1 MiB, concurrency >= 1")
    if (
        limits.max_concurrent_per_partner < 0
        or limits.max_pending_aggregates_per_partner < 1
        or not 0 < limits.first_message_seconds <= 600
    ):
        raise ConfigError(
            f"{path} [limits]: per-partner limits must be >= 1 (0: half the concurrency) and "
            "first_message_seconds between 0 and 600"
        )

    datasets = tuple(
        _dataset(table, f"{path} [[dataset]] #{i + 1}")
        for i, table in enumerate(top.tables("dataset"))
    )
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: dataset names must be unique, got {names}")
    config = NodeConfig(
        node_dir=node_dir,
        jurisdiction=jurisdiction,
        listen=listen,
        database=node_dir / top.optional("database", str, "node.duckdb"),
        policy=node_dir / top.optional("policy", str, "policy.toml"),
        epoch_hours=epoch_hours,
        tls=tls_config,
        limits=limits,
        datasets=datasets,
        compute=_compute(top.optional("compute", dict, {}), node_dir, f"{path} [compute]"),
    )
    top.finish()
    return config


def _compute(table: dict[str, object], node_dir: Path, where: str) -> ComputeConfig:
    reader = TableReader(
        dict(table), where, ("scheduler", "tls_ca", "tls_cert", "tls_key", "partition_items")
    )

    def path(key: str) -> Path | None:
        value = reader.optional(key, str, "")
        return node_dir / value if value else None

    compute = ComputeConfig(
        scheduler=reader.optional("scheduler", str, OWN_POOL),
        tls_ca=path("tls_ca"),
        tls_cert=path("tls_cert"),
        tls_key=path("tls_key"),
        partition_items=reader.optional("partition_items", int, 1_000_000),
    )
    reader.finish()
    return check_compute(compute, where)


def _dataset(table: dict[str, object], where: str) -> DatasetConfig:
    reader = TableReader(
        dict(table),
        where,
        ("name", "kind", "sql", "key_column", "aggregate_columns", "disclosable_columns"),
    )
    name = reader.required("name", str)
    if not _NAME.match(name):
        raise ConfigError(f"{where}: dataset name {name!r} must be lower-case letters, digits, _")
    kind = reader.required("kind", str)
    if kind not in DATASET_KINDS:
        raise ConfigError(f"{where}: kind {kind!r} must be one of {', '.join(DATASET_KINDS)}")
    dataset = DatasetConfig(
        name=name,
        kind=kind,
        sql=reader.required("sql", str),
        key_column=reader.optional("key_column", str, "address" if kind == "wallet" else ""),
        aggregate_columns=reader.string_list("aggregate_columns"),
        disclosable_columns=reader.string_list("disclosable_columns"),
    )
    reader.finish()
    return dataset
