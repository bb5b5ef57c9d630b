"""The sidecar's admin port: a tiny HTTP/1.1 server and its endpoints (/ready, /metrics, ...)."""
