"""Helpers to run blogqueue for real in tests and load tests: worker processes, fake servers."""
