"""Verifiers: fed every byte of a file, each returns a verdict."""
