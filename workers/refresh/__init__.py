"""How a swap works: the refresh loop trains MIND further on new clicks, builds a shadow collection,
verifies it and moves the live alias (publishing, the model registry, segments, the refresh state,
the cross-process publish lock and the refresh metrics)."""
