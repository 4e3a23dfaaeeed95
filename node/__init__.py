"""The jurisdiction's node: datasets in DuckDB, epoch keys, policy enforcement and the gRPC server."""
