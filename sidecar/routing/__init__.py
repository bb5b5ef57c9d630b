"""Routing: the routers (request head → decision) over route tables compiled once per config. Pure."""
