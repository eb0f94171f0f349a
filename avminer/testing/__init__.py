"""Helpers that start real services for benchmarks and tests (not used by the mining path)."""
