"""Benchmarks: each prints a table (median, p99, ratio to a baseline measured in the same run)."""
