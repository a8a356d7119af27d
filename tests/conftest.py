"""Shared fixtures: Go toolchains and the test-program build matrix."""
