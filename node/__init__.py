"""The jurisdiction's node: DuckDB datasets, epoch keys, policy enforcement, the gRPC server."""
