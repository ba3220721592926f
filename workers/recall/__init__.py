"""Serving recall over Kafka: the request/reply worker, the engine shared with the HTTP gateway
(user tower + one Milvus search + merge), the live model that follows the alias, the client and the
recall metrics."""
