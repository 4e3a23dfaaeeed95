"""The one place a node's gRPC server is built and run: mTLS, limits, health, reflection."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedtrace import group, parallel
from fedtrace.errors import ConfigError, FedtraceError
from fedtrace.logs import LogFormat, configure_logging, context
from fedtrace.pki import ROLE_NODE, PkiError, read_key_pem, verify_issued_by
from fedtrace.revocation import RevocationWatch
from fedtrace.v1 import aggregate_pb2_grpc, node_pb2_grpc, overlap_pb2_grpc, requests_pb2_grpc
from node import store
from node.audit import AUDIT_DIR, AuditLog
from node.audit.anchor import anchor_genesis, close_trail, open_trail
from node.auth import IdentityInterceptor
from node.config import NodeConfig, load_node_config, parse_listen, with_scheduler
from node.epoch import BlindingProgress, DatasetError, current_epoch, epoch_is_current
from node.gate import Gate
from node.metrics import NodeMetrics, start_metrics_server, stop_metrics_server
from node.policy import load_policy, utc_now
from node.replay import replay_guard
from node.services import aggregate, match, overlap, requests
from node.state import NodeState, PolicyHolder, watch_policy
from node.systemd import notify_ready, notify_stopping

log = logging.getLogger(__name__)

SERVE_LOCK = "serve.lock"
STOP_GRACE_SECONDS = 30.0
EPOCH_CHECK_SECONDS = 10.0
POLICY_CHECK_SECONDS = 1.0


@dataclass
class RunningNode:
    server: grpc.Server
    port: int
    state: NodeState


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the node's {what}: {exc.strerror}") from None


def lock_node_dir(node_dir: Path) -> int:
    """Hold NODE_DIR/serve.lock for this process's life; a second `node serve` fails at once.

    Returns the open descriptor; the kernel drops the lock when the process exits.
    """
    path = node_dir / SERVE_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise ConfigError(f"{path}: cannot lock the node directory: {exc.strerror}") from None
        raise ConfigError(
            f"{node_dir} is already served by pid {holder}: stop that process first "
            "(one `fedtrace node serve` per node directory)"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def check_certificate(config: NodeConfig) -> None:
    """The node's certificate exists, chains to the CA and names this jurisdiction's node."""
    tls_dir = config.tls.cert.parent
    issue_hint = (
        f"issue one on the secretariat's machine with `fedtrace pki issue CA_DIR OUT_DIR "
        f"--name {config.jurisdiction} --role node` and copy its cert.pem and key.pem into "
        f"{tls_dir}"
    )
    if not config.tls.cert.exists():
        raise ConfigError(f"{config.tls.cert}: the node certificate is missing; {issue_hint}")
    if not config.tls.key.exists():
        raise ConfigError(f"{config.tls.key}: the node's private key is missing; {issue_hint}")
    if not config.tls.ca.exists():
        raise ConfigError(
            f"{config.tls.ca}: the federation CA certificate is missing; copy the CA's ca.pem there"
        )
    certificate_pem = _read(config.tls.cert, "certificate")
    try:
        identity = verify_issued_by(certificate_pem, _read(config.tls.ca, "CA certificate"))
    except PkiError as exc:
        raise ConfigError(f"{config.tls.cert}: {exc}") from None
    if identity.jurisdiction != config.jurisdiction or identity.role != ROLE_NODE:
        raise ConfigError(
            f"{config.tls.cert} names {identity.jurisdiction} {identity.role}, but this node is "
            f"{config.jurisdiction} node; {issue_hint}"
        )


def check_port_free(listen: str) -> None:
    """Fail before any blinding when another process already listens on HOST:PORT."""
    host, port = parse_listen(listen, "--listen")
    if port == 0:
        return
    try:
        candidates = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None
    family, kind, proto, _, address = candidates[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(_in_use(listen, exc.strerror or "not available")) from None


def _in_use(listen: str, why: str) -> str:
    return (
        f"cannot listen on {listen}: {why} (is another node serving there?); stop it or "
        "choose another port with --listen or node.toml's listen"
    )


def log_blinded(dataset: str, done: int, total: int) -> None:
    """Blinding progress as a plain log line, for each chunk before the last."""
    if done < total:
        log.info("dataset %s: blinded %s of %s items", dataset, f"{done:,}", f"{total:,}")


@dataclass(frozen=True)
class StartupProgress:
    """Call it with what start-up is doing; `blinded` hears a new epoch's items blinded."""

    say: Callable[[str], None]
    blinded: BlindingProgress

    def __call__(self, message: str) -> None:
        self.say(message)


@contextmanager
def epoch_progress() -> Iterator[StartupProgress]:
    """Start-up progress: what is being done and a bar of the items blinded so far for a
    new epoch, live on a terminal; plain log lines otherwise."""
    if not sys.stderr.isatty():
        yield StartupProgress(lambda message: log.info("%s", message), log_blinded)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        SpinnerColumn,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        TextColumn("{task.fields[items]}", markup=False),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        tasks: dict[TaskID, int] = {}  # each task and its total (1: a step, not items)

        def finish() -> None:
            for task, total in tasks.items():
                bar.update(task, completed=total, total=total)

        def show(message: str) -> None:
            finish()
            tasks[bar.add_task(message, total=None, items="")] = 1

        def blinded(dataset: str, done: int, total: int) -> None:
            if tasks:
                task = list(tasks)[-1]
                tasks[task] = total
                bar.update(task, completed=done, total=total, items=f"{done:,}/{total:,}")

        yield StartupProgress(show, blinded)
        finish()


def load_state(
    config: NodeConfig,
    database: store.NodeDatabase,
    progress: Callable[[str], None],
    blinded: BlindingProgress | None = None,
) -> NodeState:
    """Policy, TLS material and one current epoch per dataset (built when none is reusable)."""
    policy = load_policy(config.policy)
    if policy.jurisdiction != config.jurisdiction:
        raise ConfigError(
            f"{config.policy}: policy is for {policy.jurisdiction!r} but this node is "
            f"{config.jurisdiction!r}"
        )
    certificate_pem = _read(config.tls.cert, "certificate")
    key_pem = read_key_pem(config.tls.key)
    metrics = NodeMetrics()
    audit = AuditLog(
        config.node_dir / AUDIT_DIR, key_pem, certificate_pem, on_append=metrics.audit_appended
    )
    open_trail(audit, database)  # before any epoch exists: a first start has none
    epochs = {}
    for dataset in config.datasets:
        try:
            epochs[dataset.name] = current_epoch(
                database,
                dataset,
                config.epoch_hours,
                progress=progress,
                blinded=blinded,
                compute=config.compute,
            )
        except DatasetError as exc:
            raise ConfigError(f"{config.node_dir / 'node.toml'}: {exc}") from None
    policies = PolicyHolder(policy, jurisdiction=config.jurisdiction, audit=audit)
    audit.append(
        "node-started",
        {"policy_version": policy.version, "policy_sha256": policy.sha256, "outcome": "started"},
    )
    anchor_genesis(audit, database)
    return NodeState(
        config=config,
        database=database,
        policies=policies,
        epochs=epochs,
        certificate_pem=certificate_pem,
        key_pem=key_pem,
        concurrency=threading.BoundedSemaphore(config.limits.max_concurrent_queries),
        gate=Gate(config, database, policies, audit, replay=replay_guard(audit), metrics=metrics),
        metrics=metrics,
    )


def build_server(state: NodeState, listen: str) -> RunningNode:
    """mTLS-only server with message limits, health and reflection; port 0 picks a free port."""
    config = state.config
    host, port = parse_listen(listen, "--listen")
    limit = config.limits.max_message_bytes
    server = grpc.server(
        # A thread for every call gRPC admits: calls that are not (yet) queries (a stream
        # awaiting its header, GetInfo) must not starve admitted ones of threads.
        futures.ThreadPoolExecutor(max_workers=config.limits.max_concurrent_queries * 4 + 4),
        interceptors=[
            IdentityInterceptor(
                RevocationWatch(config.tls.revoked, ca_pem=_read(config.tls.ca, "CA certificate")),
                state.gate.audit,
            )
        ],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on this port fails instead of sharing
        ],
        maximum_concurrent_rpcs=config.limits.max_concurrent_queries * 4,
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(match.NodeServicer(state), server)
    overlap_pb2_grpc.add_OverlapServiceServicer_to_server(overlap.OverlapServicer(state), server)
    aggregate_pb2_grpc.add_AggregateServiceServicer_to_server(
        aggregate.AggregateServicer(state), server
    )
    requests_pb2_grpc.add_RequestServiceServicer_to_server(requests.RequestServicer(state), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            match.SERVICE_NAME,
            overlap.SERVICE_NAME,
            requests.SERVICE_NAME,
            aggregate.SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = grpc.ssl_server_credentials(
        [(state.key_pem, state.certificate_pem)],
        root_certificates=_read(config.tls.ca, "CA certificate"),
        require_client_auth=True,
    )
    try:
        bound = server.add_secure_port(f"{host}:{port}", credentials)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise FedtraceError(_in_use(listen, "address in use or not available here"))
    for name in ("", match.SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningNode(server=server, port=bound, state=state)


def record_epoch_ages(state: NodeState) -> None:
    now = utc_now()
    for name, epoch in state.epochs.items():
        state.metrics.set_epoch_age(name, (now - epoch.created).total_seconds())


def refresh_epochs(state: NodeState, stop: threading.Event, every_seconds: float) -> None:
    """Start a new epoch when a dataset's data changed or its epoch expired; the old one serves."""
    while not stop.wait(every_seconds):
        record_epoch_ages(state)
        for dataset in state.config.datasets:
            try:
                epoch = state.epochs[dataset.name]
                if not epoch_is_current(state.database, epoch, dataset, state.config.epoch_hours):
                    state.epochs[dataset.name] = current_epoch(
                        state.database,
                        dataset,
                        state.config.epoch_hours,
                        progress=lambda message: log.info("%s", message),
                        blinded=log_blinded,
                        compute=state.config.compute,
                    )
            except Exception:  # noqa: BLE001 - keep serving the current epoch; say why
                log.exception("dataset %s: could not start a new epoch", dataset.name)


def serve(
    node_dir: Path,
    listen: str | None = None,
    *,
    log_format: LogFormat | None = None,
    metrics_listen: str | None = None,
    scheduler: str | None = None,
) -> int:
    """Run the node until SIGTERM or SIGINT; in-flight calls finish, then the server exits.

    `log_format` is "json" or "text" (None: text on a terminal, JSON otherwise);
    `metrics_listen` (HOST:PORT) serves Prometheus metrics over plain HTTP. Under
    systemd (Type=notify) the node says READY once it serves and STOPPING on a signal.
    `scheduler` overrides node.toml's ``[compute] scheduler`` (where epochs are built).
    """
    configure_logging(log_format, logging.INFO, sys.stderr)
    config = load_node_config(node_dir)
    if scheduler is not None:
        config = with_scheduler(config, scheduler)
    # Everything that can be checked in a moment fails here, before any blinding.
    lock_node_dir(node_dir)
    check_certificate(config)
    check_port_free(listen or config.listen)
    database = store.NodeDatabase(config.database)
    with epoch_progress() as progress:
        state = load_state(config, database, progress, progress.blinded)
    running = build_server(state, listen or config.listen)
    metrics_server = None
    if metrics_listen:
        metrics_host, metrics_port = parse_listen(metrics_listen, "--metrics")
        metrics_server, bound = start_metrics_server(
            metrics_host, metrics_port, metrics=state.metrics
        )
        log.info("metrics on http://%s:%d/metrics", metrics_host, bound)
    record_epoch_ages(state)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing in-flight calls, then stopping", signum)
        notify_stopping()
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    running.server.start()
    refresher = threading.Thread(
        target=refresh_epochs,
        args=(state, stopping, EPOCH_CHECK_SECONDS),
        daemon=True,
        name="epoch-refresher",
    )
    refresher.start()
    watcher = threading.Thread(
        target=watch_policy,
        args=(state, stopping, POLICY_CHECK_SECONDS),
        daemon=True,
        name="policy-watcher",
    )
    watcher.start()
    # A node restarted onto stored epochs (or building on Dask) has not started its process
    # pool; started now, in the background, a 10,000-point request already uses every core.
    # Only worth its processes when the policy admits requests that large.
    largest = max((g.max_items_per_query for g in state.policies.current().grants), default=0)
    if largest > group.WARM_PARALLEL_THRESHOLD:
        threading.Thread(target=parallel.warm_pool, daemon=True, name="pool-warmer").start()
    host, _ = parse_listen(listen or config.listen, "--listen")
    # The one line on stdout: operators and the local-federation harness read the bound port here.
    sys.stdout.write(f"fedtrace node {config.jurisdiction} serving on {host}:{running.port}\n")
    sys.stdout.flush()
    log.info("serving", extra=context(jurisdiction=config.jurisdiction, port=running.port))
    notify_ready(f"serving on {host}:{running.port}")
    stopping.wait()
    running.server.stop(STOP_GRACE_SECONDS).wait()
    if metrics_server is not None:
        stop_metrics_server(metrics_server)
    refresher.join(timeout=STOP_GRACE_SECONDS)
    watcher.join(timeout=STOP_GRACE_SECONDS)
    state.gate.audit.append("node-stopped", {"outcome": "stopped"})
    close_trail(state.gate.audit, state.database)
    log.info("stopped")
    return 0
