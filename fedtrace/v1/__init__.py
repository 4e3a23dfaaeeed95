"""Generated protobuf and gRPC stubs for the fedtrace.v1 wire contract (do not edit; see scripts/gen_protos)."""
