"""Fixtures for the embedded Tansu broker (filled in by the streaming work)."""
