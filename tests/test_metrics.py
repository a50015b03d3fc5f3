"""A worker's Prometheus metrics: counted from the records each batch wrote, served by `--metrics-port`."""

from __future__ import annotations

import math
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry

from imgq.contract import ERROR_CODES, error_record, ok_record
from imgq.results.store import ResultStore
from imgq.settings import Settings
from producer.cli import cli
from tests import imagegen
from tests.processes import free_port, scrape, scrape_when, start_worker, wait_for_workers, wait_until_done
from worker.metrics import WorkerMetrics, serve


@pytest.fixture
def metrics():
    return WorkerMetrics(CollectorRegistry())


def value(metrics: WorkerMetrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels or None)


def test_a_batch_is_counted_from_its_records(metrics):
    records = [ok_record("j", 0, "/a", [], decode_ms=2.0, inference_ms=40.0),
               ok_record("j", 1, "/b", [], decode_ms=4.0, inference_ms=40.0),
               error_record("j", 2, "/c", "corrupt", "truncated", decode_ms=1.0, inference_ms=0.0),
               error_record("j", 3, "/d", "missing", "gone", decode_ms=0.0, inference_ms=0.0)]
    metrics.observe_batch(records, seconds=0.3)
    metrics.observe_batch(records[:1], seconds=0.1)
    assert value(metrics, "imgq_images_processed_total") == 5
    assert value(metrics, "imgq_images_failed_total", code="corrupt") == 1
    assert value(metrics, "imgq_images_failed_total", code="missing") == 1
    assert value(metrics, "imgq_images_failed_total", code="forbidden") == 0  # exported before it happens
    assert (value(metrics, "imgq_batch_images_count"), value(metrics, "imgq_batch_images_sum")) == (2, 5)
    assert value(metrics, "imgq_batch_seconds_sum") == pytest.approx(0.4)
    assert value(metrics, "imgq_image_decode_seconds_count") == 5
    assert value(metrics, "imgq_image_decode_seconds_sum") == pytest.approx(0.009)
    assert value(metrics, "imgq_image_inference_seconds_count") == 3  # classified images only
    assert value(metrics, "imgq_image_inference_seconds_sum") == pytest.approx(0.12)


def test_a_batch_that_wrote_nothing_is_not_a_batch(metrics):
    metrics.observe_batch([], seconds=1.0)  # a cancelled job, or a redelivery already recorded
    assert value(metrics, "imgq_batch_images_count") == 0
    assert value(metrics, "imgq_images_processed_total") == 0


def test_failed_batches_are_counted_by_exception(metrics):
    metrics.batch_failed(ConnectionError("Redis went away"))
    assert value(metrics, "imgq_batch_errors_total", exception="ConnectionError") == 1


@pytest.mark.slow
def test_a_workers_metrics_endpoint_counts_the_job(settings, tmp_path):
    """`imgq worker --metrics-port PORT`: after a job, /metrics holds the job's own counts."""
    folder = tmp_path / "photos"
    good = imagegen.write_formats(folder)
    broken = {p: code for p, code in imagegen.write_broken(folder / "broken").items() if p.exists()}
    port = free_port()
    store = ResultStore.from_settings(settings)
    worker = start_worker(settings, "metrics", tmp_path / "worker.log", "--metrics-port", str(port), cli=True)
    try:
        wait_for_workers(store, [worker])
        result = CliRunner().invoke(cli, ["submit", str(folder), "--batch-size", "4"], env=settings.as_env())
        job = result.stdout.strip()
        wait_until_done(store, job, timeout=120, workers=[worker])
        total = len(good) + len(broken)
        # The job is done once its last records are stored; the task counts them just after, the images first
        # and each record's histograms last: wait until the last record is in them, not just the images.
        samples = scrape_when(port, lambda samples: counted(samples) >= total)
        assert not reachable("127.0.0.2", port)  # loopback only, IMGQ_METRICS_ADDRESS's default
        heartbeat = store.workers()[0]
    finally:
        worker.stop()

    codes = Counter(r["error"]["code"] for r in store.iter_results(job) if r["status"] == "error")
    assert codes == Counter(broken.values())
    assert samples["imgq_images_processed_total"] == total
    for code in ERROR_CODES:
        assert samples[f'imgq_images_failed_total{{code="{code}"}}'] == codes.get(code, 0)
    assert samples["imgq_batch_images_count"] == math.ceil(total / 4) and samples["imgq_batch_images_sum"] == total
    assert samples["imgq_batch_seconds_count"] == math.ceil(total / 4) and samples["imgq_batch_seconds_sum"] > 0
    assert samples["imgq_image_decode_seconds_count"] == total
    assert samples["imgq_image_inference_seconds_count"] == len(good)
    assert samples["imgq_image_inference_seconds_sum"] > 0
    assert samples["imgq_model_load_seconds"] == pytest.approx(heartbeat.model_load_seconds, abs=0.01)
    assert samples["imgq_batches_in_hand"] == 0
    assert "imgq worker: metrics at http://" in worker.output()


def counted(samples: dict[str, float]) -> float:
    """Records whose inference time or error code the samples count: what a task's metrics count last."""
    failed = sum(samples.get(f'imgq_images_failed_total{{code="{code}"}}', 0) for code in ERROR_CODES)
    return samples.get("imgq_image_inference_seconds_count", 0) + failed


def test_metrics_port_setting_is_0_for_off_up_to_65535():
    assert Settings().metrics_port == 0
    assert Settings.from_env({"IMGQ_METRICS_PORT": "0"}).metrics_port == 0
    assert Settings.from_env({"IMGQ_METRICS_PORT": "9100"}).metrics_port == 9100
    for bad in ("-1", "65536", "on"):
        with pytest.raises(ValueError, match="IMGQ_METRICS_PORT"):
            Settings.from_env({"IMGQ_METRICS_PORT": bad})


def test_metrics_address_setting_is_loopback_unless_set_and_an_ip_address():
    assert Settings().metrics_address == "127.0.0.1"
    assert Settings.from_env({"IMGQ_METRICS_ADDRESS": "0.0.0.0"}).metrics_address == "0.0.0.0"
    assert Settings.from_env({"IMGQ_METRICS_ADDRESS": "::"}).metrics_address == "::"
    for bad in ("localhost", "0.0.0.0:9100", "10.0.0.256"):
        with pytest.raises(ValueError, match="IMGQ_METRICS_ADDRESS must be an IP address"):
            Settings.from_env({"IMGQ_METRICS_ADDRESS": bad})


def reachable(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


@pytest.mark.parametrize(("address", "other_loopback"), [(None, False), ("0.0.0.0", True)])
def test_the_metrics_server_binds_the_address_asked_for(metrics, tmp_path, address, other_loopback):
    """127.0.0.2 is a loopback address too, but not the one a default server binds: it stands for every
    address of the machine that is not 127.0.0.1."""
    runtime = SimpleNamespace(settings=Settings(), classifier=SimpleNamespace(load_seconds=1.5), batches_in_hand=0)
    port = free_port()
    server = serve(port, runtime, metrics, address=address)
    try:
        assert server.server_address[0] == (address or "127.0.0.1")
        assert scrape(port)["imgq_model_load_seconds"] == 1.5
        assert reachable("127.0.0.2", port) is other_loopback
    finally:
        server.shutdown()
        server.server_close()


def test_worker_command_takes_a_metrics_address(tmp_path):
    result = CliRunner().invoke(cli, ["worker", "--metrics-address", "nowhere"])
    assert result.exit_code == 2 and "IMGQ_METRICS_ADDRESS must be an IP address" in result.output
    assert "--metrics-address" in CliRunner().invoke(cli, ["worker", "--help"]).output
