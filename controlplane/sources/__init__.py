"""Sources of resources and services: a directory of YAML files (local mode), Kubernetes (cluster mode)."""
