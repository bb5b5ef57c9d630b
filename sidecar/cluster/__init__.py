"""Clusters: a destination's endpoints and the load balancer that picks among them."""
