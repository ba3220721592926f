"""The item catalogue: the items topic -> per-partition SQLite state (``worker``, ``store``), read by the
recall side (``reader``, ``view``)."""
