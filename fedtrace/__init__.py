"""fedtrace: privacy-preserving federated queries for cross-border asset tracing.

This package holds what nodes and coordinators share: protocol primitives
(group, filters), identifier canonicalisation, PKI, and the CLI entry point.
"""

__version__ = "0.1.0"
