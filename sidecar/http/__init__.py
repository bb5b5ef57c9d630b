"""HTTP codec of the sidecar: sans-IO parsing and framing (`http1`) and the heads the proxy sends
(`messages`). Pure: bytes in, events out; events in, bytes out."""
