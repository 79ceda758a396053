"""Generated CSI v1.12.0 protobuf and gRPC bindings (package csi.v1)."""
