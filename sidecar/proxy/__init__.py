"""The sidecar's HTTP/1.1 proxy engine: listeners, codec and upstream connection pools."""
