"""Config: the client side of the config stream and the application of what it receives."""
