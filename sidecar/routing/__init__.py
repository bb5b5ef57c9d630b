"""Routing: compiled route tables that map a request head to a weighted choice of clusters. Pure."""
