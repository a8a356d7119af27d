"""Helpers the tests and benchmarks share: capabilities, oracles, Go builds, workloads, fakes."""
