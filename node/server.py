"""The one place a node's gRPC server is built and run: mTLS, limits, health, reflection."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from fedtrace.errors import ConfigError, FedtraceError
from fedtrace.pki import read_key_pem
from fedtrace.revocation import RevocationWatch
from fedtrace.v1 import aggregate_pb2_grpc, node_pb2, node_pb2_grpc, overlap_pb2_grpc
from node import store
from node.aggregate_service import SERVICE_NAME as AGGREGATE_SERVICE_NAME
from node.aggregate_service import AggregateServicer
from node.audit import AUDIT_DIR, AuditLog
from node.auth import IdentityInterceptor
from node.config import NodeConfig, load_node_config, parse_listen
from node.epoch import DatasetError, current_epoch, epoch_is_current
from node.gate import Gate
from node.overlap_service import SERVICE_NAME as OVERLAP_SERVICE_NAME
from node.overlap_service import OverlapServicer
from node.policy import load_policy
from node.replay import replay_guard
from node.requests_service import SERVICE_NAME as REQUEST_SERVICE_NAME
from node.requests_service import add_request_service
from node.service import NodeServicer, NodeState, PolicyHolder, watch_policy

log = logging.getLogger(__name__)

SERVICE_NAME = node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name
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


def load_state(
    config: NodeConfig, database: store.NodeDatabase, progress: Callable[[str], None]
) -> NodeState:
    """Policy, TLS material and one current epoch per dataset (built when none is reusable)."""
    policy = load_policy(config.policy)
    if policy.jurisdiction != config.jurisdiction:
        raise ConfigError(
            f"{config.policy}: policy is for {policy.jurisdiction!r} but this node is "
            f"{config.jurisdiction!r}"
        )
    epochs = {}
    for dataset in config.datasets:
        try:
            epochs[dataset.name] = current_epoch(
                database, dataset, config.epoch_hours, progress=progress
            )
        except DatasetError as exc:
            raise ConfigError(f"{config.node_dir / 'node.toml'}: {exc}") from None
    certificate_pem = _read(config.tls.cert, "certificate")
    key_pem = read_key_pem(config.tls.key)
    audit = AuditLog(config.node_dir / AUDIT_DIR, key_pem, certificate_pem)
    policies = PolicyHolder(policy, jurisdiction=config.jurisdiction, audit=audit)
    audit.append(
        "node-started",
        {"policy_version": policy.version, "policy_sha256": policy.sha256, "outcome": "started"},
    )
    return NodeState(
        config=config,
        database=database,
        policies=policies,
        epochs=epochs,
        certificate_pem=certificate_pem,
        key_pem=key_pem,
        concurrency=threading.BoundedSemaphore(config.limits.max_concurrent_queries),
        gate=Gate(config, database, policies, audit, replay=replay_guard(audit)),
    )


def build_server(state: NodeState, listen: str) -> RunningNode:
    """mTLS-only server with message limits, health and reflection; port 0 picks a free port."""
    config = state.config
    host, port = parse_listen(listen, "--listen")
    limit = config.limits.max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.limits.max_concurrent_queries + 4),
        interceptors=[IdentityInterceptor(RevocationWatch(config.tls.revoked), state.gate.audit)],
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ],
        maximum_concurrent_rpcs=config.limits.max_concurrent_queries * 4,
    )
    node_pb2_grpc.add_NodeServiceServicer_to_server(NodeServicer(state), server)
    overlap_pb2_grpc.add_OverlapServiceServicer_to_server(OverlapServicer(state), server)
    aggregate_pb2_grpc.add_AggregateServiceServicer_to_server(AggregateServicer(state), server)
    add_request_service(state, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            OVERLAP_SERVICE_NAME,
            REQUEST_SERVICE_NAME,
            AGGREGATE_SERVICE_NAME,
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
        raise FedtraceError(f"cannot listen on {listen}: address in use or not available here")
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningNode(server=server, port=bound, state=state)


def refresh_epochs(state: NodeState, stop: threading.Event, every_seconds: float) -> None:
    """Start a new epoch when a dataset's data changed or its epoch expired; the old one serves."""
    while not stop.wait(every_seconds):
        for dataset in state.config.datasets:
            try:
                epoch = state.epochs[dataset.name]
                if not epoch_is_current(state.database, epoch, dataset, state.config.epoch_hours):
                    state.epochs[dataset.name] = current_epoch(
                        state.database,
                        dataset,
                        state.config.epoch_hours,
                        progress=lambda message: log.info("%s", message),
                    )
            except Exception:  # noqa: BLE001 - keep serving the current epoch; say why
                log.exception("dataset %s: could not start a new epoch", dataset.name)


def serve(node_dir: Path, listen: str | None = None) -> int:
    """Run the node until SIGTERM or SIGINT; in-flight calls finish, then the server exits."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_node_config(node_dir)
    database = store.NodeDatabase(config.database)
    state = load_state(config, database, lambda message: log.info("%s", message))
    running = build_server(state, listen or config.listen)
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing in-flight calls, then stopping", signum)
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
    host, _ = parse_listen(listen or config.listen, "--listen")
    print(f"fedtrace node {config.jurisdiction} serving on {host}:{running.port}", flush=True)
    stopping.wait()
    running.server.stop(STOP_GRACE_SECONDS).wait()
    refresher.join(timeout=STOP_GRACE_SECONDS)
    watcher.join(timeout=STOP_GRACE_SECONDS)
    state.gate.audit.append("node-stopped", {"outcome": "stopped"})
    log.info("stopped")
    return 0
