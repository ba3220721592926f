"""What happens to a click: the ingest worker consumes ``clicks``, dead-letters bad events and applies
the valid ones, exactly once by event id, to the per-partition SQLite state store that the refresh
and recall workers read."""
