"""Horizontal scale: several worker processes on one job, against one Redis.

- Two workers on this machine share a job: both take batches, every image has exactly one record, and the
  per-worker counts (records, heartbeats) add up to the job's.
- Where root and `ip netns` allow it, Redis and each worker run in network namespaces of their own, joined by
  veth pairs, so that their traffic crosses a network as it would between machines; one worker's link is cut
  mid-job, and no image may be lost.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import replace

import pytest

from imgq.jobs.deliveries import Deliveries
from imgq.results.store import ResultStore, delete_namespace
from tests import imagegen
from tests.conftest import make_settings
from tests.processes import (
    Process,
    imgq_cli,
    start_redis,
    start_worker,
    wait_for_consumers,
    wait_for_redis,
    wait_for_workers,
    wait_until_done,
)

pytestmark = pytest.mark.slow


def write_photos(folder, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        imagegen.save(folder / f"{i:03d}.png", size=(64, 48), seed=i)


def submit(settings, folder, batch_size: int) -> str:
    return imgq_cli(settings, "submit", str(folder), "--batch-size", str(batch_size)).stdout.strip()


def records_by_worker(store: ResultStore, job: str) -> tuple[list[dict], Counter]:
    """The job's records (checked: exactly one per image, in order) and how many each worker wrote."""
    records = list(store.iter_results(job))
    assert [r["image"] for r in records] == list(range(store.status(job).total))
    return records, Counter(r["worker"] for r in records)


def stop_all(processes: list[Process]) -> None:
    for process in processes:
        process.stop(timeout=20)


# -- two workers, one machine --------------------------------------------------------------------------------


def test_two_workers_share_one_job(redis_url, tmp_path):
    settings = make_settings(redis_url, tmp_path, batch_size=2, concurrency=2, heartbeat_seconds=1)
    store = ResultStore.from_settings(settings)
    workers = [start_worker(settings, name, tmp_path / f"{name}.log") for name in ("scale-a", "scale-b")]
    try:
        write_photos(tmp_path / "photos", 40)
        wait_for_workers(store, workers)
        wait_for_consumers(workers)  # both take batches from the first: else one may do the whole job
        job = submit(settings, tmp_path / "photos", batch_size=2)  # 20 batches
        wait_until_done(store, job, timeout=180, workers=workers)

        status = store.status(job)
        assert (status.state, status.processed, status.ok) == ("done", 40, 40)
        _, counts = records_by_worker(store, job)
        assert set(counts) == {f"scale-a@{os.uname().nodename}", f"scale-b@{os.uname().nodename}"}
        assert all(n > 0 for n in counts.values()) and sum(counts.values()) == 40

        beats = wait_for_heartbeats(store, counts)
        fleet = json.loads(imgq_cli(settings, "status", "--workers", "--json").stdout)
        assert sorted(w["hostname"] for w in fleet["workers"]) == sorted(counts)
        assert all((w["pool"], w["concurrency"]) == ("threads", 2) for w in fleet["workers"])
        assert all(beats[name]["images_per_second"] > 0 for name in counts)
    finally:
        stop_all(workers)
        delete_namespace(redis_url, settings.namespace)


def wait_for_heartbeats(store: ResultStore, counts: Counter, timeout: float = 15.0) -> dict[str, dict]:
    """Until each worker's heartbeat counts the records it wrote; returns the heartbeats by worker."""
    deadline = time.monotonic() + timeout
    while True:
        beats = {w.hostname: w.to_dict() for w in store.workers()}
        if all(beats.get(name, {}).get("images_done") == n for name, n in counts.items()):
            return beats
        assert time.monotonic() < deadline, f"heartbeats {beats} never matched the records {counts}"
        time.sleep(0.2)


# -- Redis and two workers on a network of namespaces ----------------------------------------------------------


def run_ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs the `ip` command (Debian package iproute2)"
    probe = f"imgq-probe-{secrets.token_hex(3)}"
    made = run_ip("netns", "add", probe)
    if made.returncode != 0:
        return f"`ip netns add` is not allowed here: {made.stderr.strip()}"
    run_ip("netns", "del", probe)
    return None


class Network:
    """Three hosts: ``redis``, ``w1``, ``w2`` (network namespaces), and this one. Each is joined to the
    redis host by a veth pair on a /30 of its own, in a 10.x.y.0/24 picked at random and unused here."""

    HOSTS = ("redis", "w1", "w2")

    def __init__(self):
        self.tag = secrets.token_hex(3)
        self.ns = {host: f"imgq-{self.tag}-{host}" for host in self.HOSTS}
        self.subnet = _unused_subnet()
        self.links = {}  # host -> (its address, the redis host's address on that link, redis-side device)

    def create(self) -> None:
        for ns in self.ns.values():
            self._ip("netns", "add", ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        for index, host in enumerate(("here", "w1", "w2")):
            self._link(index, host)

    def _link(self, index: int, host: str) -> None:
        near, far = f"iq{self.tag}{index}a", f"iq{self.tag}{index}b"  # device names: 15 characters at most
        mine, theirs = self.subnet[4 * index + 2], self.subnet[4 * index + 1]
        self._ip("link", "add", near, "type", "veth", "peer", "name", far)
        self._ip("link", "set", far, "netns", self.ns["redis"])
        if host != "here":
            self._ip("link", "set", near, "netns", self.ns[host])
        prefix = () if host == "here" else ("-n", self.ns[host])
        self._ip(*prefix, "addr", "add", f"{mine}/30", "dev", near)
        self._ip(*prefix, "link", "set", near, "up")
        self._ip("-n", self.ns["redis"], "addr", "add", f"{theirs}/30", "dev", far)
        self._ip("-n", self.ns["redis"], "link", "set", far, "up")
        self.links[host] = (str(mine), str(theirs), far)

    def redis_address(self, host: str) -> str:
        """The redis host's address as ``host`` reaches it."""
        return self.links[host][1]

    def cut(self, host: str) -> None:
        """Take ``host``'s link down, as a pulled cable would: no reset, its packets simply stop."""
        self._ip("-n", self.ns["redis"], "link", "set", self.links[host][2], "down")

    def exec_prefix(self, host: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.ns[host])

    def destroy(self) -> None:
        # Delete the links first: a namespace outlives its name while the kernel still holds a socket of it
        # (a connection that was cut keeps retrying), and its veth would stay with it, this host's end included.
        for _, _, far in self.links.values():
            run_ip("-n", self.ns["redis"], "link", "del", far)
        for ns in self.ns.values():
            run_ip("netns", "del", ns)

    @staticmethod
    def _ip(*args: str) -> None:
        done = run_ip(*args)
        assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr}"


def _unused_subnet() -> ipaddress.IPv4Network:
    routes = run_ip("-4", "route", "show").stdout + run_ip("-4", "addr", "show").stdout
    while True:
        subnet = ipaddress.IPv4Network(f"10.{secrets.choice(range(100, 250))}.{secrets.randbelow(256)}.0/24")
        if f"10.{subnet.network_address.packed[1]}.{subnet.network_address.packed[2]}." not in routes:
            return subnet


@pytest.fixture
def network():
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    network = Network()
    try:
        network.create()
        yield network
    finally:
        network.destroy()


def test_cutting_a_workers_network_link_mid_job_loses_no_image(network, tmp_path):
    password = secrets.token_hex(12)
    redis_process = start_redis(6379, tmp_path / "redis", tmp_path / "redis.log", "--requirepass", password,
                                prefix=network.exec_prefix("redis"), bind="0.0.0.0")
    # Short heartbeats and reconciling, so that the cut worker's batches are taken over in seconds.
    base = make_settings("redis://", tmp_path, batch_size=2, concurrency=2, heartbeat_seconds=1,
                         reconcile_seconds=2)
    url = f"redis://:{password}@{{}}:6379/0"
    here = replace(base, broker_url=url.format(network.redis_address("here")))
    processes = [redis_process]
    try:
        wait_for_redis(here.broker_url, redis_process)
        workers = [start_worker(replace(base, broker_url=url.format(network.redis_address(host))), f"net-{host}",
                                tmp_path / f"{host}.log", prefix=network.exec_prefix(host)) for host in ("w1", "w2")]
        processes += workers
        store = ResultStore.from_settings(here)
        write_photos(tmp_path / "photos", 60)
        wait_for_workers(store, workers)
        wait_for_consumers(workers)  # the worker whose link is cut must get batches of the job too
        job = submit(here, tmp_path / "photos", batch_size=2)  # 30 batches

        cut_worker = f"net-w1@{os.uname().nodename}"
        wait_for_records_by(store, job, cut_worker)
        network.cut("w1")
        interrupted = images_held_without_records(store, job, cut_worker)
        at_cut = store.status(job)
        assert at_cut.state == "running", "the job finished before the cut: make it longer"

        wait_until_done(store, job, timeout=120, workers=[workers[1]])
        records, counts = records_by_worker(store, job)
        assert store.status(job).processed == 60 and sum(counts.values()) == 60
        assert counts[cut_worker] > 0 and counts[f"net-w2@{os.uname().nodename}"] > 0
        # The batches the cut worker held were classified again by the other one.
        assert all(records[image]["worker"] != cut_worker for image in interrupted)
        print(f"cut at {at_cut.processed}/60 records; the cut worker held {len(interrupted)} images without "
              f"records; records by worker: {dict(counts)}")
        workers[0].stop(sig=signal.SIGKILL)  # its machine is lost: a warm shutdown would wait for Redis
    finally:
        for process in reversed(processes):
            process.stop(timeout=10)


def wait_for_records_by(store: ResultStore, job: str, worker: str, timeout: float = 120.0) -> None:
    """Until ``worker`` has written records for the job and holds a batch still lacking records."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        written = any(r["worker"] == worker for r in store.iter_results(job))
        if written and images_held_without_records(store, job, worker):
            return
        time.sleep(0.05)
    raise AssertionError(f"{worker} never held a batch of job {job}")


def images_held_without_records(store: ResultStore, job: str, worker: str) -> list[int]:
    """Images of the batches ``worker`` is classifying that have no record yet."""
    held = Deliveries(store.redis, store.keys).inflight(job)
    batches = [batch for batch, owner in held.items() if owner["worker"].startswith(worker + ":")]
    images = [image for batch in batches for image, _ in (store.batch(job, batch) or {"images": []})["images"]]
    return store.missing(job, images)
