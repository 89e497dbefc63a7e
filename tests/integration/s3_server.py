"""A real S3 endpoint for tests: moto in server mode on 127.0.0.1, over HTTP like production.

Import it from any test (`from tests.integration.s3_server import moto_s3, s3_client`):

    with moto_s3() as endpoint_url:
        client = s3_client(endpoint_url)
        bucket = make_bucket(client)

moto keeps its state per process, so tests should use their own bucket (`make_bucket` names
one uniquely) rather than reset the server under someone else.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

REGION = "us-east-1"
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def start_moto() -> tuple[str, Callable[[], None]]:
    """Start moto on a free local port; returns its endpoint URL and the function that stops it."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return f"http://{host}:{port}", server.stop


@contextmanager
def moto_s3() -> Iterator[str]:
    """The endpoint URL of a moto server that lives for the `with` block."""
    endpoint_url, stop = start_moto()
    try:
        yield endpoint_url
    finally:
        stop()


def s3_client(endpoint_url: str) -> Any:
    """A boto3 S3 client for the moto endpoint, with dummy credentials (none from the machine)."""
    import boto3

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=REGION, **CREDENTIALS)


def make_bucket(client: Any, name: str | None = None) -> str:
    """Create a bucket (uniquely named unless `name` is given) and return its name."""
    bucket = name or f"test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    return bucket


def allow_public_read(client: Any, bucket: str) -> None:
    """Let anonymous GETs read the bucket (what a CDN origin policy grants), so URLs can be fetched."""
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
