"""A local S3-compatible server for the object-storage tests: moto in server mode (`moto[server]`), a real HTTP
endpoint on a free loopback port, in its own process, stopped when the tests end.

Clients reach it through the standard environment, as they would a real S3-compatible store: `AWS_ENDPOINT_URL`
and a throwaway key pair (`env()`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`with S3Server() as s3:` starts `python -m moto.server` on 127.0.0.1; `s3.bucket()` makes a fresh bucket."""

    KEY_ID, SECRET = "cook-test-key-id", "cook-test-secret-do-not-log"

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.KEY_ID,
                "AWS_SECRET_ACCESS_KEY": self.SECRET, "AWS_DEFAULT_REGION": "us-east-1"}

    def __enter__(self) -> "S3Server":
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError("the moto S3 server did not start")
                time.sleep(0.1)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def bucket(self) -> str:
        """Create a bucket with a fresh name; returns `s3://NAME`."""
        import boto3

        name = f"cook-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", **self._client_args()).create_bucket(Bucket=name)
        return f"s3://{name}"

    def keys(self, url: str) -> list[str]:
        """Every object key under an `s3://bucket/prefix` URL, sorted (straight from the server, no fsspec cache)."""
        import boto3

        bucket, _, prefix = url[len("s3://"):].partition("/")
        client = boto3.client("s3", **self._client_args())
        out: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return sorted(out)

    def _client_args(self) -> dict:
        return dict(endpoint_url=self.endpoint, aws_access_key_id=self.KEY_ID, aws_secret_access_key=self.SECRET,
                    region_name="us-east-1")
