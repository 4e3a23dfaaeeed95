"""Generated stubs of the fedtrace.v1 wire contract: do not edit; run scripts/gen_protos."""
