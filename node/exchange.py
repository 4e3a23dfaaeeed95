"""The exchange schema: the standard tables every node loads, and their columns.

Kept free of heavy imports so `fedtrace node ingest --help` can list it quickly;
`node.store` creates and fills these tables.
"""

from __future__ import annotations

SCHEMA_DOC = "docs/ingest.md"

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "transactions": (
        "tx_hash",
        "chain",
        "from_address",
        "to_address",
        "asset",
        "amount",
        "amount_eur",
        "timestamp",
    ),
    "subjects": ("subject_id", "full_name", "date_of_birth", "nationality", "document_number"),
    "subject_wallets": ("subject_id", "address", "chain"),
}
REQUIRED_COLUMNS: dict[str, tuple[str, ...]] = {
    "transactions": ("tx_hash", "chain", "from_address", "to_address", "amount_eur", "timestamp"),
    "subjects": ("subject_id", "full_name", "date_of_birth"),
    "subject_wallets": ("subject_id", "address"),
}


def describe_tables() -> str:
    """Each table and its columns, required ones first marked with *, for help texts."""
    lines = [f"The exchange schema ({SCHEMA_DOC}); * marks a required column:"]
    for table, columns in TABLE_COLUMNS.items():
        shown = ", ".join(c + ("*" if c in REQUIRED_COLUMNS[table] else "") for c in columns)
        lines.append(f"  {table}: {shown}")
    return "\n".join(lines)
