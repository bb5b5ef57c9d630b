"""Listeners: the asyncio Protocols that accept connections (outbound, inbound with mutual TLS, raw
TCP) and drive one exchange per request over them."""
