"""lightmesh sidecar: an asyncio HTTP/1.1 proxy in front of one workload, configured by the control plane."""
