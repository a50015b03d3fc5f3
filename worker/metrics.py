"""Prometheus metrics of a worker: what it classified, how long that took, and where the time went.

Recorded in every worker process (an update costs a lock and an addition); served at ``/metrics`` on
``IMGQ_METRICS_PORT`` only when that setting is above 0 (``imgq worker --metrics-port``), on
``IMGQ_METRICS_ADDRESS`` (127.0.0.1 unless set: ``--metrics-address``). The numbers come
from the records a batch wrote, so they count exactly what this process stored: a redelivered batch whose
images already had records writes none and counts none.

With the prefork pool each child holds its own counters and no server is started (docs/operations.md, "What operators
see"): the threads and solo pools keep everything in the one process that serves them.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from imgq.contract import ERROR_CODES, ResultRecord

log = logging.getLogger(__name__)

BATCH_IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)  # IMGQ_BATCH_SIZE is 1 to 1024
BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
# One image: decoding a thumbnail takes a millisecond, a camera JPEG without draft mode a few hundred.
IMAGE_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class WorkerMetrics:
    """The metrics of one worker process, registered in ``registry`` (tests pass a private one)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.registry = registry
        self.images = Counter("imgq_images_processed", "Images given a record (ok or error) by this worker.",
                              registry=registry)
        self.failed = Counter("imgq_images_failed", "Images recorded as errors, by error code.", ["code"],
                              registry=registry)
        for code in ERROR_CODES:  # every code is exported from the start, at 0, so rate() sees its first error
            self.failed.labels(code)
        self.batch_errors = Counter("imgq_batch_errors", "Batches that raised (to be retried or delivered again), "
                                    "by exception type.", ["exception"], registry=registry)
        self.batch_images = Histogram("imgq_batch_images", "Records written per batch.",
                                      buckets=BATCH_IMAGES_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("imgq_batch_seconds", "Time from taking a batch to its records stored.",
                                       buckets=BATCH_SECONDS_BUCKETS, registry=registry)
        self.decode_seconds = Histogram("imgq_image_decode_seconds", "Time to open and decode one image.",
                                        buckets=IMAGE_SECONDS_BUCKETS, registry=registry)
        self.inference_seconds = Histogram("imgq_image_inference_seconds", "One image's share of its forward "
                                           "pass (classified images only).", buckets=IMAGE_SECONDS_BUCKETS,
                                           registry=registry)
        self.model_load_seconds = Gauge("imgq_model_load_seconds", "Time to build, load and warm up the model.",
                                        registry=registry)
        self.in_hand = Gauge("imgq_batches_in_hand", "Batches this worker is classifying now.", registry=registry)

    def observe_batch(self, records: list[ResultRecord], seconds: float) -> None:
        """Count the records one batch wrote, and the batch's time. A batch that wrote none (a cancelled job,
        or a redelivery whose images all had records) is not a batch of size 0: it is left out."""
        if not records:
            return
        self.images.inc(len(records))
        self.batch_images.observe(len(records))
        self.batch_seconds.observe(seconds)
        for record in records:
            self.decode_seconds.observe(record.decode_ms / 1000)
            if record.error is None:
                self.inference_seconds.observe(record.inference_ms / 1000)
            else:
                self.failed.labels(record.error.code).inc()

    def batch_failed(self, exc: BaseException) -> None:
        self.batch_errors.labels(type(exc).__name__).inc()


METRICS = WorkerMetrics()
# The process's metrics; worker/tasks.py records into them, serve() exposes them.


def serve(port: int, runtime, metrics: WorkerMetrics = METRICS, address: str | None = None):
    """Serve ``metrics`` at http://``address``:``port``/metrics from a daemon thread, with the model's load
    time and the runtime's batches in hand; ``address`` defaults to IMGQ_METRICS_ADDRESS (loopback unless
    set: prometheus_client's own default is every interface). Returns the HTTP server (its
    ``server_address`` is where it listens). Raises OSError when the address or port cannot be bound."""
    address = address or runtime.settings.metrics_address
    metrics.model_load_seconds.set(runtime.classifier.load_seconds)
    metrics.in_hand.set_function(lambda: runtime.batches_in_hand)
    server, _ = start_http_server(port, addr=address, registry=metrics.registry)
    log.info("Serving Prometheus metrics at http://%s:%d/metrics", _host(address), port)
    return server


def _host(address: str) -> str:
    return f"[{address}]" if ":" in address else address
