"""Benchmarks: each bench_*.py is a script; common.py is what they share."""
