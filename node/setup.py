"""`fedtrace node init`: a working node directory with default datasets and a deny-all policy."""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedtrace.errors import ConfigError
from fedtrace.pki import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    CERT_FILE,
    KEY_FILE,
    ROLE_NODE,
    PkiError,
    issue,
    validate_jurisdiction,
    verify_issued_by,
)
from fedtrace.wire import MAX_MESSAGE_BYTES
from node import store
from node.config import NODE_FILE
from node.policy import deny_all_policy_text

WALLETS_SQL = """
WITH legs AS (
    SELECT from_address AS address, tx_hash, 0::DECIMAL(18, 2) AS eur_in,
           amount_eur AS eur_out, "timestamp" FROM transactions
    UNION ALL
    SELECT to_address, tx_hash, amount_eur, 0::DECIMAL(18, 2), "timestamp" FROM transactions
)
SELECT address,
       count(DISTINCT tx_hash) AS tx_count,
       sum(eur_in)::DECIMAL(38, 2) AS total_in_eur,
       sum(eur_out)::DECIMAL(38, 2) AS total_out_eur,
       min("timestamp") AS first_seen,
       max("timestamp") AS last_seen
FROM legs GROUP BY address
"""

SUBJECTS_SQL = """
SELECT subject_id, full_name, date_of_birth, document_number, nationality FROM subjects
"""


def node_toml_text(jurisdiction: str, listen: str) -> str:
    def block(sql: str) -> str:
        return '"""' + sql.rstrip() + '\n"""'

    return f"""# fedtrace node configuration: see docs/ingest.md and the README, "For operators
# (partner states)".
jurisdiction = "{jurisdiction}"
listen = "{listen}"
database = "node.duckdb"
policy = "policy.toml"   # the disclosure policy this node enforces
epoch_hours = 24         # a new secret scalar per dataset at least this often

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"
ca = "tls/ca.pem"

[limits]
max_message_bytes = {MAX_MESSAGE_BYTES}
max_concurrent_queries = 8
max_items_per_request = 2000000
# max_concurrent_per_partner = 4          # default: half of max_concurrent_queries
# max_pending_aggregates_per_partner = 8  # open aggregate round-1s per partner
# first_message_seconds = 10              # a query stream's header must arrive by then

# Where epochs are built (docs/scale-out.md). Default: this machine's cores.
# [compute]
# scheduler = "tls://dask-scheduler.example:8786"  # or "local": a LocalCluster per build
# tls_ca = "compute/ca.pem"           # the cluster's CA; this node's client cert and key:
# tls_cert = "compute/cert.pem"
# tls_key = "compute/key.pem"
# partition_items = 1000000           # above this many items an epoch is partitioned

# Datasets: SQL over the node's tables, one row per identifier.
[[dataset]]
name = "wallets"
kind = "wallet"
key_column = "address"
aggregate_columns = ["tx_count", "total_in_eur", "total_out_eur"]
# linked_subjects: the subject ids subject_wallets links to the address (follow-up requests)
disclosable_columns = ["tx_count", "total_in_eur", "total_out_eur", "first_seen", "last_seen",
                       "linked_subjects"]
sql = {block(WALLETS_SQL)}

[[dataset]]
name = "subjects"
kind = "person"
aggregate_columns = []
disclosable_columns = ["subject_id", "full_name", "date_of_birth", "nationality"]
sql = {block(SUBJECTS_SQL)}
"""


_LISTEN_LINE = re.compile(r'^listen = "[^"\n]*"', re.MULTILINE)


def set_listen(node_dir: Path, listen: str) -> None:
    """Rewrite node.toml's `listen` (e.g. to the port a server bound to port 0 got)."""
    path = node_dir / NODE_FILE
    text = path.read_text()
    if not _LISTEN_LINE.search(text):
        raise ConfigError(f"{path}: no top-level listen line to rewrite; edit it by hand")
    path.write_text(_LISTEN_LINE.sub(f'listen = "{listen}"', text, count=1))


@dataclass(frozen=True)
class InitResult:
    node_dir: Path
    certificate_issued: bool  # the node has its certificate and key (issued here or installed)
    installed_from: Path | None = None  # the `pki issue` output directory they were copied from


def issue_command(jurisdiction: str) -> str:
    return f"fedtrace pki issue CA_DIR OUT_DIR --name {jurisdiction} --role node"


def missing_certificate_advice(ca_dir: Path, tls_dir: Path, jurisdiction: str) -> str:
    """What to do when --ca names a directory with the CA certificate only."""
    return (
        f"{ca_dir} holds neither the CA key ({CA_KEY_FILE}) nor an issued node certificate: "
        f"on the secretariat's machine run `{issue_command(jurisdiction)}`, then copy "
        f"OUT_DIR/{CERT_FILE} and OUT_DIR/{KEY_FILE} into {tls_dir} (key.pem mode 0600), "
        f"or run `fedtrace node init` again with --ca OUT_DIR"
    )


def _check_issued(ca_dir: Path, jurisdiction: str) -> None:
    """The certificate `pki issue` wrote into `ca_dir` is this jurisdiction's node's."""
    cert_path = ca_dir / CERT_FILE
    try:
        identity = verify_issued_by(cert_path.read_bytes(), (ca_dir / CA_CERT_FILE).read_bytes())
    except PkiError as exc:
        raise ConfigError(f"{cert_path}: {exc}") from None
    if identity.jurisdiction != jurisdiction or identity.role != ROLE_NODE:
        raise ConfigError(
            f"{cert_path} names {identity.jurisdiction} {identity.role}, not {jurisdiction} node; "
            f"issue one with `{issue_command(jurisdiction)}`; nothing changed"
        )


def _install_issued(ca_dir: Path, tls_dir: Path) -> None:
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    for name in (CA_CERT_FILE, CERT_FILE):
        shutil.copyfile(ca_dir / name, tls_dir / name)
    key = tls_dir / KEY_FILE
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_bytes((ca_dir / KEY_FILE).read_bytes())


def init_node(node_dir: Path, jurisdiction: str, ca_dir: Path, listen: str) -> InitResult:
    """Create NODE_DIR with node.toml, a deny-all policy, TLS material and an empty database."""
    jurisdiction = validate_jurisdiction(jurisdiction)
    if (node_dir / NODE_FILE).exists():
        raise ConfigError(f"{node_dir}: already a node ({NODE_FILE} exists); nothing changed")
    ca_cert = ca_dir / CA_CERT_FILE
    if not ca_cert.exists():
        raise ConfigError(
            f"{ca_dir}: no {CA_CERT_FILE} here; pass the federation CA directory, or the "
            "directory `fedtrace pki issue` wrote for this node, with --ca"
        )
    has_ca_key = (ca_dir / CA_KEY_FILE).exists()
    installed = not has_ca_key and (ca_dir / CERT_FILE).exists()
    if installed:
        if not (ca_dir / KEY_FILE).exists():
            raise ConfigError(
                f"{ca_dir} holds {CERT_FILE} but no {KEY_FILE}: copy the whole directory "
                "`fedtrace pki issue` wrote (cert.pem, key.pem, ca.pem); nothing changed"
            )
        _check_issued(ca_dir, jurisdiction)
    node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    node_dir.chmod(0o700)  # database, keys and audit trail: the node's account only
    tls_dir = node_dir / "tls"
    if has_ca_key:
        issue(ca_dir, tls_dir, name=jurisdiction, role=ROLE_NODE)
    elif installed:
        _install_issued(ca_dir, tls_dir)
    else:
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(ca_cert, tls_dir / CA_CERT_FILE)
    version = datetime.now(UTC).strftime("%Y-%m-%d") + ".1"
    (node_dir / "policy.toml").write_text(deny_all_policy_text(jurisdiction, version))
    (node_dir / NODE_FILE).write_text(node_toml_text(jurisdiction, listen))
    store.connect(node_dir / "node.duckdb").close()
    return InitResult(
        node_dir=node_dir,
        certificate_issued=has_ca_key or installed,
        installed_from=ca_dir if installed else None,
    )
