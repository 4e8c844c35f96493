"""Errors, registries, the CLI convention, provenance and checksums: what every layer uses."""
