"""Fixtures for the embedded Milvus server (filled in by the Milvus work)."""
