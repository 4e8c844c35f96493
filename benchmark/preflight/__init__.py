"""Checks before a sweep reaches a cluster, and what it will cost (`python -m benchmark.preflight`)."""
