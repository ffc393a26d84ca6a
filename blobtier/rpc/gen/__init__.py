"""Generated protobuf and gRPC stubs; do not edit. Regenerate: ``python -m blobtier.rpc.codegen``."""
