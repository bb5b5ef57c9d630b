"""lightmesh control plane: sources → store → translate → snapshot cache → gRPC config stream."""
