"""The HTTP gateway: the FastAPI app (``/rec/recall``, admin endpoints, offline ``/docs``), its auth,
middleware and micro-batched recall path."""
