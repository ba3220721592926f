"""A real S3-compatible server for tests: moto's, on a free loopback port, with one bucket."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.fixtures_milvus import free_port


@contextmanager
def moto_s3(bucket: str) -> Iterator[str]:
    """Start moto's S3 server, create ``bucket``, yield the endpoint URL; stop it on exit."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
        ).create_bucket(Bucket=bucket)
        yield endpoint
    finally:
        server.stop()
