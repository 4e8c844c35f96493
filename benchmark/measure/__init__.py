"""Measurement scripts: step costs, sharing, kill trials, the GPU check (not on a sweep's path)."""
