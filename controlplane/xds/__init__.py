"""The config stream: its pure per-stream protocol state and the gRPC server that drives it."""
