"""Generated protobuf and grpclib modules for proto/admin.proto (tools/gen_proto.sh)."""
