"""`fedtrace node init`: a working node directory with default datasets and a deny-all policy."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fedtrace.errors import ConfigError
from fedtrace.pki import ROLE_NODE, issue, validate_jurisdiction
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


@dataclass(frozen=True)
class InitResult:
    node_dir: Path
    certificate_issued: bool


def init_node(node_dir: Path, jurisdiction: str, ca_dir: Path, listen: str) -> InitResult:
    """Create NODE_DIR with node.toml, a deny-all policy, TLS material and an empty database."""
    jurisdiction = validate_jurisdiction(jurisdiction)
    if (node_dir / NODE_FILE).exists():
        raise ConfigError(f"{node_dir}: already a node ({NODE_FILE} exists); nothing changed")
    ca_cert = ca_dir / "ca.pem"
    if not ca_cert.exists():
        raise ConfigError(f"{ca_dir}: no ca.pem here; pass the federation CA directory with --ca")
    node_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    node_dir.chmod(0o700)  # database, keys and audit trail: the node's account only
    tls_dir = node_dir / "tls"
    issued = (ca_dir / "ca.key").exists()
    if issued:
        issue(ca_dir, tls_dir, name=jurisdiction, role=ROLE_NODE)
    else:
        tls_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(ca_cert, tls_dir / "ca.pem")
    version = datetime.now(UTC).strftime("%Y-%m-%d") + ".1"
    (node_dir / "policy.toml").write_text(deny_all_policy_text(jurisdiction, version))
    (node_dir / NODE_FILE).write_text(node_toml_text(jurisdiction, listen))
    store.connect(node_dir / "node.duckdb").close()
    return InitResult(node_dir=node_dir, certificate_issued=issued)
