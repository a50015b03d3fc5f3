"""The deployment as a team runs it: the image built, the stack of docker-compose.yml up on a container engine.

podman builds the image (the Dockerfile, with a stand-in base from deploy/build-bases.sh: no public registry
is reachable here) and podman-compose brings up docker-compose.yml with a small override of the test's own
(below): Redis with its password secret, two workers, beat. The producer runs as one-off containers
(`podman-compose run --rm producer ...`), on a folder mounted where the compose file mounts PHOTOS_DIR. The
s3 profile's SeaweedFS service runs beside them, and the producer submits a prefix of one of its buckets.

What the override changes, and why: the images (the stand-in Redis, the image built here under a tag holding
the hash of its inputs), two worker replicas, and, through the variables a `.env` would set, random weights
(IMGQ_WEIGHTS=random: the ImageNet weights cannot be downloaded here, so the labels are meaningless and only
the pipeline is checked), small batches and quick heartbeats, and what the s3 profile needs (the endpoint
http://seaweedfs:8333 and /data:s3://photos as the workers' allowed roots; its key pair is the aws_credentials
secret that deploy/make-secrets.sh writes, as the Redis password is). Everything else is the compose file's.

The engine: Debian's podman, as root, with runc and cgroupfs (crun refuses this machine's cgroups) and
ulimits no higher than this shell's (raising them needs a capability the sandbox lacks), set in a
containers.conf of the test's own (CONTAINERS_CONF): the machine's configuration is left alone. podman runs
health checks from systemd timers, which a container without systemd lacks: the test runs them as the timer
would (`podman healthcheck run`).

The built images are kept between runs, keyed by their inputs: a warm run builds nothing. docs/deployment.md
says how long the test takes, cold and warm.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests import imagegen

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
BASES = ROOT / "deploy" / "build-bases.sh"
MAKE_SECRETS = ROOT / "deploy" / "make-secrets.sh"
TOOLS = ("podman", "podman-compose", "runc", "debootstrap")
# What goes into the image: a change to any of these builds a new one (and only then).
IMAGE_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "imgq", "producer", "worker")
KILL_JOB_IMAGES = 240  # enough 4-image batches that both workers hold some when one is killed
BUCKET = "photos"  # the s3 profile's bucket: IMGQ_ALLOWED_ROOTS=/data:s3://photos, as docs/object-storage.md sets it
S3_OBJECTS = 12  # three 4-image batches: both workers can take some


def engine_or_skip() -> None:
    """Skips, saying why, where no engine can be installed; fails where `make install-test` would have."""
    missing = [tool for tool in TOOLS if not shutil.which(tool)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(missing)} not installed, and installing needs root and apt-get "
                    "(`make install-test` installs them as root on Debian)")
    pytest.fail(f"{', '.join(missing)} not installed: `make install-test` installs them (as root)")


def digest(paths: list[Path]) -> str:
    """sha256 over the names and contents of ``paths`` (folders walked; __pycache__ skipped)."""
    hasher = hashlib.sha256()
    for top in paths:
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file()
                                                    and "__pycache__" not in p.parts)
        for path in files:
            hasher.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return hasher.hexdigest()[:16]


@dataclass
class Engine:
    """podman and podman-compose as root with runc, cgroupfs and ulimits this sandbox allows."""

    env: dict[str, str]

    @classmethod
    def configured(cls, folder: Path) -> Engine:
        nofile = min(4096, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        nproc = min(4096, resource.getrlimit(resource.RLIMIT_NPROC)[0])
        conf = folder / "containers.conf"
        conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={nofile}:{nofile}", "nproc={nproc}:{nproc}"]\n'
                        '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGQ_")}
        return cls({**env, "CONTAINERS_CONF": str(conf)})

    def run(self, *argv: str, check: bool = True, timeout: float = 300, env: dict | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=cwd)
        if check:
            assert done.returncode == 0, f"{' '.join(argv)}: {done.returncode}\n{done.stdout[-3000:]}\n" \
                                         f"{done.stderr[-3000:]}"
        return done

    def podman(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run("podman", *args, **kwargs)

    def exists(self, image: str) -> bool:
        return self.podman("image", "exists", image, check=False).returncode == 0


def build_images(engine: Engine) -> tuple[str, str]:
    """(imgq image, Redis image): the stand-in bases and the Dockerfile's image, each built unless an image
    tagged with the hash of its inputs exists already. Prints what it built and how long it took."""
    bases_key = digest([BASES])
    python_base = f"localhost/imgq-base-python:3.11-{bases_key}"
    redis_base = f"localhost/imgq-base-redis:7-{bases_key}"
    if not (engine.exists(python_base) and engine.exists(redis_base)):
        started = time.monotonic()
        engine.run("sh", str(BASES), "--python", python_base, "--redis", redis_base, timeout=1200)
        print(f"built the stand-in bases in {time.monotonic() - started:.0f} s")
    image = f"localhost/imgq:test-{digest([ROOT / name for name in IMAGE_INPUTS])}-{bases_key}"
    if not engine.exists(image):
        started = time.monotonic()
        cert = ["--secret", f"id=pip_cert,src={ca_bundle()}"] if ca_bundle() else []
        # --format docker: the OCI format has no HEALTHCHECK, and podman would drop the Dockerfile's.
        engine.podman("build", "--format", "docker", "--build-arg", f"BASE_IMAGE={python_base}", *cert, "-t", image,
                      str(ROOT),
                      timeout=3600)
        print(f"built {image} in {time.monotonic() - started:.0f} s")
        for old in engine.podman("images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/imgq").stdout.split():
            if old.startswith("localhost/imgq:test-") and image.split("-", 1)[1] not in old:  # built from older code
                engine.podman("rmi", old, check=False)
    return image, redis_base


def build_openvino_image(engine: Engine, image: str) -> str:
    """The Dockerfile's openvino target (no TensorFlow; the conversion for random weights made at build time),
    built unless it exists; its full stage is ``image``'s, so only the target's own steps run."""
    openvino = image.replace("localhost/imgq:test-", "localhost/imgq:test-openvino-")
    if not engine.exists(openvino):
        base = image.rsplit("-", 1)[1]
        started = time.monotonic()
        cert = ["--secret", f"id=pip_cert,src={ca_bundle()}"] if ca_bundle() else []
        engine.podman("build", "--format", "docker", "--target", "openvino", "--build-arg", "OPENVINO_WEIGHTS=random",
                      "--build-arg", f"BASE_IMAGE=localhost/imgq-base-python:3.11-{base}", *cert, "-t", openvino,
                      str(ROOT), timeout=3600)
        print(f"built {openvino} in {time.monotonic() - started:.0f} s")
    return openvino


def build_seaweedfs_image(engine: Engine, image: str) -> str:
    """The Dockerfile's seaweedfs target (the s3 profile's store), built unless it exists: the python base and
    the Dockerfile are its only inputs, so a change to imgq's code keeps it."""
    bases_key = image.rsplit("-", 1)[1]
    store = f"localhost/imgq-seaweedfs:test-{digest([ROOT / 'Dockerfile'])}-{bases_key}"
    if not engine.exists(store):
        started = time.monotonic()
        cert = ["--secret", f"id=pip_cert,src={ca_bundle()}"] if ca_bundle() else []
        engine.podman("build", "--format", "docker", "--target", "seaweedfs",
                      "--build-arg", f"BASE_IMAGE=localhost/imgq-base-python:3.11-{bases_key}", *cert, "-t", store,
                      str(ROOT), timeout=1800)
        print(f"built {store} in {time.monotonic() - started:.0f} s")
        for old in engine.podman("images", "--format", "{{.Repository}}:{{.Tag}}",
                                 "localhost/imgq-seaweedfs").stdout.split():
            if old != store:  # built from an older Dockerfile
                engine.podman("rmi", old, check=False)
    return store


def ca_bundle() -> str | None:
    """The CA bundle this machine's pip trusts (PIP_CERT, else pip's configuration): the container's pip needs
    it to reach the package index here. Given to the build as a secret, never a layer."""
    cert = os.environ.get("PIP_CERT")
    if not cert and shutil.which("pip"):
        listed = subprocess.run(["pip", "config", "get", "global.cert"], capture_output=True, text=True)
        cert = listed.stdout.strip() if listed.returncode == 0 else ""
    return cert if cert and os.path.isfile(cert) else None


@dataclass
class Stack:
    """The compose project brought up by the test."""

    engine: Engine
    image: str
    project: str
    files: list[str]
    env: dict[str, str]
    root: Path
    password: str
    s3_keys: tuple[str, str]  # (access key, secret key): the aws_credentials secret's
    good: list[Path]
    broken: dict[Path, str]
    _store: object = None  # job_status's connection, made on first use

    def compose(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return self.engine.run("podman-compose", "-p", self.project, *[a for f in self.files for a in ("-f", f)],
                               *args, env=self.env, cwd=self.root, **kwargs)

    def producer(self, *args: str, entrypoint: str | None = None, timeout: float = 300) -> str:
        """What `docker compose run --rm producer ARGS` prints on standard output (-T: no terminal; --no-deps:
        Redis is up already); fails unless the command exits with 0.

        podman-compose 1.0 exits with 0 whatever the container's command did, and prints its own lines on
        standard output around the command's: its `podman run ...` line, then the command's output, then
        `exit code: N`."""
        done = self.compose("run", "--rm", "-T", "--no-deps", *(["--entrypoint", entrypoint] if entrypoint else []),
                            "producer", *args, timeout=timeout)
        lines = done.stdout.splitlines()
        first = max(i for i, line in enumerate(lines) if line.startswith("podman run ")) + 1
        codes = [int(line.split(":")[1]) for line in lines[first:] if line.startswith("exit code: ")]
        assert codes in ([], [0]), f"producer {' '.join(args)}: exit code {codes}\n{done.stdout[-3000:]}\n" \
                                   f"{done.stderr[-3000:]}"
        return "\n".join(line for line in lines[first:] if not line.startswith("exit code: "))

    def container(self, service: str, number: int = 1) -> str:
        return f"{self.project}_{service}_{number}"

    def exec(self, container: str, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return self.engine.podman("exec", container, *argv, **kwargs)

    def job_status(self, job: str):
        """The job's status read by this process from the stack's Redis, at the Redis container's address on the
        project's bridge network (which the host reaches), with the stack's password.

        Not through a command in a container: that resolves the name `redis` anew each time, and when a
        container of the network dies, podman 4.3's aardvark-dns (1.4) reloads by closing and reopening its
        sockets, so a lookup in that moment fails ("Name or service not known"; containers/aardvark-dns#389).
        Connections open before it (the workers') are not affected: only new lookups are."""
        from imgq.results.store import ResultStore
        from imgq.settings import Settings

        if self._store is None:
            url = f"redis://:{self.password}@{self.address(self.container('redis'))}:6379/0"
            self._store = ResultStore.from_settings(Settings(broker_url=url))  # the compose file's namespace
        return self._store.status(job)

    def address(self, container: str) -> str:
        """The container's address on the project's bridge network, which the host reaches."""
        networks = self.inspect(container)["NetworkSettings"]["Networks"]
        return next(network["IPAddress"] for network in networks.values() if network.get("IPAddress"))

    def s3_client(self):
        """A boto3 client of the test's own for the seaweedfs service's S3 gateway, at its address on the bridge
        (its port is published nowhere), with the keys the stack was given (the aws_credentials secret's)."""
        import boto3
        from botocore.config import Config

        config = Config(s3={"addressing_style": "path"}, retries={"mode": "standard", "max_attempts": 5},
                        request_checksum_calculation="when_required", connect_timeout=5, read_timeout=30)
        return boto3.session.Session().client(
            "s3", endpoint_url=f"http://{self.address(self.container('seaweedfs'))}:8333", region_name="us-east-1",
            aws_access_key_id=self.s3_keys[0], aws_secret_access_key=self.s3_keys[1], config=config)

    def inspect(self, container: str) -> dict:
        return json.loads(self.engine.podman("inspect", container).stdout)[0]

    def health(self, container: str, timeout: float = 600) -> str:
        """Runs the container's health check as podman's timer would, until it passes; its status then."""
        deadline = time.monotonic() + timeout
        while self.engine.podman("healthcheck", "run", container, check=False).returncode != 0:
            assert time.monotonic() < deadline, self.logs(container)
            assert self.inspect(container)["State"]["Running"], self.logs(container)
            time.sleep(3)
        state = self.inspect(container)["State"]
        return (state.get("Health") or state.get("Healthcheck"))["Status"]

    def logs(self, container: str) -> str:
        done = self.engine.podman("logs", container, check=False)
        return (done.stdout + done.stderr)[-4000:]

    def project_objects(self) -> dict[str, list[str]]:
        """The containers, volumes and networks of the project that exist."""
        label = f"label=io.podman.compose.project={self.project}"
        found = {
            "containers": self.engine.podman("ps", "-a", "--filter", label, "--format", "{{.Names}}").stdout.split(),
            "volumes": self.engine.podman("volume", "ls", "--filter", label, "--format", "{{.Name}}").stdout.split(),
            "networks": [n for n in self.engine.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
                         if n.startswith(self.project)],
        }
        return found


def write_override(path: Path, image: str, redis_image: str, store_image: str) -> None:
    """The test's override of docker-compose.yml: images, and two worker replicas. JSON is YAML."""
    services = {"redis": {"image": redis_image}, "worker": {"image": image, "deploy": {"replicas": 2}},
                "beat": {"image": image}, "producer": {"image": image}, "seaweedfs": {"image": store_image}}
    path.write_text(json.dumps({"services": services}, indent=2))


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    engine_or_skip()
    root = tmp_path_factory.mktemp("compose")
    engine = Engine.configured(root)
    image, redis_image = build_images(engine)
    store_image = build_seaweedfs_image(engine, image)

    photos = root / "photos"
    good = imagegen.write_formats(photos / "photos" / "a")
    good += [imagegen.save(photos / "photos" / f"{i}.png", size=(64, 48), seed=i) for i in range(5)]
    broken = {p: code for p, code in imagegen.write_broken(photos / "photos" / "broken").items() if p.exists()}
    for i in range(KILL_JOB_IMAGES):
        imagegen.save(photos / "many" / f"{i:04d}.png", size=(48, 32), seed=1000 + i)
    photos.chmod(0o755)
    (root / "reports").mkdir(mode=0o777)
    (root / "reports").chmod(0o777)  # the producer writes as uid 1000
    engine.run("sh", str(MAKE_SECRETS), str(root / "secrets"))
    password = (root / "secrets" / "redis_password").read_text().strip()
    credentials = configparser.RawConfigParser()  # as boto3 reads it
    credentials.read(root / "secrets" / "aws_credentials")
    s3_keys = (credentials["default"]["aws_access_key_id"], credentials["default"]["aws_secret_access_key"])
    override = root / "override.yml"
    write_override(override, image, redis_image, store_image)

    project = f"imgqtest{uuid.uuid4().hex[:8]}"
    env = {"PHOTOS_DIR": str(photos), "REPORTS_DIR": str(root / "reports"), "SECRETS_DIR": str(root / "secrets"),
           # What a .env would set. Random weights: nothing can be downloaded here (labels are meaningless).
           "IMGQ_WEIGHTS": "random", "IMGQ_BATCH_SIZE": "4", "IMGQ_HEARTBEAT_SECONDS": "1",
           "IMGQ_RECONCILE_SECONDS": "2", "IMGQ_LOG_FORMAT": "json",
           # The s3 profile, as docs/object-storage.md has a newcomer set it in .env (its keys: the secret).
           "IMGQ_S3_ENDPOINT_URL": "http://seaweedfs:8333", "IMGQ_ALLOWED_ROOTS": f"/data:s3://{BUCKET}"}
    deployed = Stack(engine, image, project, [str(ROOT / "docker-compose.yml"), str(override)], env, root, password,
                     s3_keys, good, broken)
    try:
        # Redis first, healthy, then the rest: podman-compose 1.0 starts services in order but does not wait
        # for `condition: service_healthy`, which Docker Compose does.
        deployed.compose("up", "-d", "--no-build", "redis", "seaweedfs")
        assert deployed.health(deployed.container("redis"), timeout=120) == "healthy"
        deployed.compose("up", "-d", "--no-build", "redis", "seaweedfs", "worker", "beat")
        yield deployed
    finally:
        deployed.compose("down", "-v", check=False, timeout=600)
        for network in deployed.project_objects()["networks"]:  # podman-compose 1.0's down leaves its network
            engine.podman("network", "rm", network, check=False)
        left = deployed.project_objects()
        assert left == {"containers": [], "volumes": [], "networks": []}, left


def test_health_checks_turn_healthy(stack):
    for number in (1, 2):
        assert stack.health(stack.container("worker", number)) == "healthy"
    assert stack.health(stack.container("redis")) == "healthy"
    beat = stack.inspect(stack.container("beat"))
    assert beat["State"]["Running"]
    assert (beat["Config"].get("Healthcheck") or {}).get("Test") in (None, ["NONE"])  # it runs no worker


def test_the_producer_classifies_the_mounted_folder_one_record_per_image(stack):
    for number in (1, 2):
        stack.health(stack.container("worker", number))
    job = stack.producer("submit", "/data/photos", "--wait", timeout=600).strip().splitlines()[-1]
    stack.producer("results", job, "-o", "/reports/photos.jsonl")
    records = [json.loads(line) for line in (stack.root / "reports" / "photos.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in records) == list(range(len(stack.good) + len(stack.broken)))
    to_container = {str(p): "/data" + str(p)[len(str(stack.root / "photos")):] for p in [*stack.good, *stack.broken]}
    by_path = {r["path"]: r for r in records}
    assert {to_container[str(p)] for p in [*stack.good, *stack.broken]} == set(by_path)
    assert all(by_path[to_container[str(p)]]["status"] == "ok" for p in stack.good)
    assert {p: by_path[to_container[str(p)]]["error"]["code"] for p in stack.broken} == stack.broken
    assert all(r["weights"].startswith("random:") for r in records if r["status"] == "ok")


def test_the_s3_profile_classifies_a_bucket_with_no_file_on_the_workers(stack):
    """The s3 profile: photos put into a bucket of the seaweedfs service (never a file the workers see), the
    producer submits its prefix, one ok record per object; an object of another bucket is outside the workers'
    allowed roots (/data:s3://photos) and recorded forbidden, never fetched. Before the kill test below, so that
    both workers run."""
    assert stack.health(stack.container("seaweedfs"), timeout=300) == "healthy"
    client = stack.s3_client()
    client.create_bucket(Bucket=BUCKET)
    client.create_bucket(Bucket="elsewhere")
    names = [f"s3only-{stack.project}-{i:02d}.png" for i in range(S3_OBJECTS)]
    for seed, name in enumerate(names):
        body = io.BytesIO()
        Image.fromarray(imagegen.pattern(64, 48, seed=2000 + seed)).save(body, format="PNG")
        client.put_object(Bucket=BUCKET, Key=f"2024/{name}", Body=body.getvalue())
    client.put_object(Bucket="elsewhere", Key=f"s3only-{stack.project}-outside.png", Body=body.getvalue())
    for number in (1, 2):
        stack.health(stack.container("worker", number))

    outside = f"s3://elsewhere/s3only-{stack.project}-outside.png"
    job = stack.producer("submit", f"s3://{BUCKET}/2024", outside, "--wait", timeout=600).strip().splitlines()[-1]
    stack.producer("results", job, "-o", "/reports/s3.jsonl")
    records = [json.loads(line) for line in (stack.root / "reports" / "s3.jsonl").read_text().splitlines()]
    by_path = {r["path"]: r for r in records}
    assert len(records) == S3_OBJECTS + 1 == len(by_path)  # one record per object
    assert sorted(by_path) == sorted([*(f"s3://{BUCKET}/2024/{name}" for name in names), outside])
    assert [by_path[f"s3://{BUCKET}/2024/{name}"]["status"] for name in names] == ["ok"] * S3_OBJECTS
    assert by_path[outside]["status"] != "ok" and by_path[outside]["error"]["code"] == "forbidden"
    # Read from the store, not from a disk: no file of them anywhere in either worker's container, looked for as
    # root (which reads every folder) along with one photo of the mounted folder, which must be found.
    for number in (1, 2):
        found = stack.engine.podman("exec", "--user", "root", stack.container("worker", number), "find", "/", "(",
                                    "-path", "/proc", "-o", "-path", "/sys", ")", "-prune", "-o", "(", "-name",
                                    "s3only-*", "-o", "-name", "rgb.jpg", ")", "-print", check=False)
        assert found.stdout.split() == ["/data/photos/a/rgb.jpg"], found.stdout + found.stderr


def test_a_worker_killed_mid_job_loses_no_image_and_repeats_none(stack):
    for number in (1, 2):
        stack.health(stack.container("worker", number))
    job = stack.producer("submit", "/data/many").strip().splitlines()[-1]
    victim = stack.container("worker", 1)
    deadline = time.monotonic() + 600
    while True:  # kill it once both workers have started on the job, before it is done
        status = stack.job_status(job)
        if status.processed >= 8:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.2)
    assert status.processed < KILL_JOB_IMAGES, f"the job finished before the kill: {status}"
    stack.engine.podman("kill", "--signal", "KILL", victim)
    while (status := stack.job_status(job)).state != "done":
        assert time.monotonic() < deadline, status
        time.sleep(1)
    stack.producer("results", job, "-o", "/reports/many.jsonl")
    records = [json.loads(line) for line in (stack.root / "reports" / "many.jsonl").read_text().splitlines()]
    assert len(records) == KILL_JOB_IMAGES
    assert sorted(r["image"] for r in records) == list(range(KILL_JOB_IMAGES))  # each image once
    assert len({r["path"] for r in records}) == KILL_JOB_IMAGES
    assert all(r["status"] == "ok" for r in records), [r for r in records if r["status"] != "ok"][:3]


def test_metrics_answer_on_the_compose_network_only(stack):
    worker = stack.container("worker", 2)
    stack.health(worker)
    fetch = ("import sys, urllib.request; url = f'http://{sys.argv[1]}:9100/metrics'; "
             "sys.stdout.write(urllib.request.urlopen(url, timeout=10).read().decode())")
    for name in (worker, "worker"):  # the replica's name, and the service's (every replica answers for it)
        scraped = stack.producer("-c", fetch, name, entrypoint="python")
        assert "imgq_images_processed_total" in scraped
    # Published nowhere: no container of the project binds a port on the host.
    for container in stack.project_objects()["containers"]:
        ports = stack.inspect(container)["NetworkSettings"].get("Ports") or {}
        assert not [binding for bindings in ports.values() for binding in (bindings or [])], (container, ports)
        assert stack.engine.podman("port", container).stdout.strip() == ""


def test_no_secret_in_inspect_ps_logs_or_any_environment(stack):
    """The Redis password and the S3 secret key: in no `podman inspect` of the project's containers, no `podman
    ps`, no container's log and no process's command line on this machine (the containers' processes included:
    the host sees them). The password is in no process's environment either; the S3 key only in weed's, to
    which the seaweedfs service's shell exports the keys of the aws_credentials secret as it execs into it (weed
    reads its identity from its environment). imgq reads both from /run/secrets."""
    containers = stack.project_objects()["containers"]
    assert {stack.container(s, n) for s, n in (("redis", 1), ("worker", 1), ("worker", 2), ("beat", 1),
                                               ("seaweedfs", 1))} <= set(containers)
    secrets = {"the Redis password": stack.password, "the S3 secret key": stack.s3_keys[1]}
    ps = stack.engine.podman("ps", "-a", "--no-trunc").stdout
    for container in containers:
        inspected = stack.engine.podman("inspect", container).stdout
        logged = stack.engine.podman("logs", container, check=False)
        for what, secret in secrets.items():
            assert secret not in inspected, (what, container)
            assert secret not in logged.stdout + logged.stderr, (what, container)
            assert secret not in ps, what
    shown: dict[str, list[tuple[str, str]]] = {what: [] for what in secrets}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            for part in ("cmdline", "environ"):
                try:
                    data = (proc / part).read_bytes()
                    command = (proc / "comm").read_text().strip()
                except OSError:  # gone, or a kernel thread
                    continue
                for what, secret in secrets.items():
                    if secret.encode() in data:
                        shown[what].append((command, part))
    assert shown["the Redis password"] == []
    assert shown["the S3 secret key"] and set(shown["the S3 secret key"]) == {("weed", "environ")}
    worker_env = stack.inspect(stack.container("worker"))["Config"]["Env"]
    assert "IMGQ_BROKER_URL_FILE=/run/secrets/broker_url" in worker_env
    assert "AWS_SHARED_CREDENTIALS_FILE=/run/secrets/aws_credentials" in worker_env
    assert not [v for v in worker_env if v.startswith(("IMGQ_BROKER_URL=", "AWS_ACCESS_KEY_ID=",
                                                       "AWS_SECRET_ACCESS_KEY="))]
    store_env = stack.inspect(stack.container("seaweedfs"))["Config"]["Env"]
    assert not [v for v in store_env if v.startswith(("AWS_ACCESS_KEY_ID=", "AWS_SECRET_ACCESS_KEY="))]
    # Redis wants the password: an anonymous client is refused, the secret's is let in.
    refused = stack.exec(stack.container("redis"), "redis-cli", "ping", check=False)
    assert "NOAUTH" in refused.stdout + refused.stderr


def test_the_openvino_image_runs_the_model_without_tensorflow(stack):
    """Item 3 of the smaller image: the openvino target has no TensorFlow, and its worker's model loads from
    the conversion made at build time (none made at start: that would need TensorFlow)."""
    openvino = build_openvino_image(stack.engine, stack.image)
    script = ("import importlib.util, sys; from worker.runtimes.loading import load_classifier; "
              "c = load_classifier('random', 4, 'fp32', 'openvino', '/home/imgq/.local/state/imgq/openvino'); "
              "print(c.runtime, c.converted, importlib.util.find_spec('tensorflow') is None, 'keras' in sys.modules)")
    ran = stack.engine.podman("run", "--rm", openvino, "python", "-c", script, timeout=600)
    runtime, converted, no_tensorflow, keras_imported = ran.stdout.strip().rsplit(" ", 3)
    assert runtime.startswith("openvino ") and converted == "[]"
    assert no_tensorflow == "True" and keras_imported == "False"
    # Other weights need a conversion, so TensorFlow: one clear error, which stops the worker before any batch.
    script = ("from worker.runtimes.loading import load_classifier\n"
              "from worker.runtimes.keras_model import WeightsError\ntry:\n"
              "    load_classifier('random:5', 4, 'fp32', 'openvino', '/home/imgq/.local/state/imgq/openvino')\n"
              "except WeightsError as exc:\n    print(exc)")
    refused = stack.engine.podman("run", "--rm", openvino, "python", "-c", script, timeout=600).stdout
    assert "making one needs TensorFlow, which is missing here" in refused and "OPENVINO_WEIGHTS" in refused
    sizes = {name: int(stack.engine.podman("image", "inspect", name, "--format", "{{.Size}}").stdout)
             for name in (stack.image, openvino)}
    print(f"image sizes: {sizes}")
    assert sizes[openvino] < sizes[stack.image] / 2
