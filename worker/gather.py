"""One model, many tasks: gather the images of concurrent tasks into shared forward passes.

A worker runs several tasks at once (Celery's threads pool). Each decodes its own images, then hands them
here and waits; one inference thread runs the model on whatever has arrived, up to the batch size. So:
- decoding of one task overlaps the forward pass of another, instead of the cores idling in turn;
- many small tasks (say 200 jobs of one image) share forward passes instead of running batches of one;
- TensorFlow sees one call at a time, which is what it is fastest at.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Request:
    images: np.ndarray
    layers: tuple[str, ...] = ()
    future: Future = field(default_factory=Future)


class Gatherer:
    """Shares one Classifier between threads. A task decodes inside ``decoding()`` and ``submit``s there.

    ``max_wait``: how long a forward pass that is not full waits for more images, and only while another
    task is still inside ``decoding()``: a worker with one task never waits.
    """

    def __init__(self, classifier, max_batch: int, max_wait: float = 0.05):
        self.classifier = classifier
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.weights_id = classifier.weights_id
        self.precision = classifier.precision
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._set_aside: deque[_Request] = deque()  # only the inference thread touches it
        self._decoding = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="imgq-inference", daemon=True).start()

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """While a task decodes, a forward pass that is not full may wait for its images."""
        with self._lock:
            self._decoding += 1
        try:
            yield
        finally:
            with self._lock:
                self._decoding -= 1

    def submit(self, images: np.ndarray, layers: tuple[str, ...] = ()) -> Future:
        """Queue ``images`` (n, 224, 224, 3) for a shared forward pass that also returns ``layers``' outputs.

        The future's result: ``(probabilities (n, 1000), {layer: outputs (n, ...)}, forward-pass ms per
        image)``. Only requests asking for the same layers share a pass.
        """
        request = _Request(images, layers)
        self._requests.put(request)
        return request.future

    def _serve(self) -> None:
        while True:
            requests = self._gather(self._take(block=True))
            images = np.concatenate([r.images for r in requests])
            started = time.perf_counter()
            try:
                probabilities, activations = self.classifier.predict_with(images, requests[0].layers)
            except Exception as exc:  # each waiting task gets the failure; the thread goes on serving
                for request in requests:
                    request.future.set_exception(exc)
                continue
            share_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
            start = 0
            for request in requests:
                part = slice(start, start + len(request.images))
                request.future.set_result((probabilities[part], {k: v[part] for k, v in activations.items()},
                                           share_ms))
                start += len(request.images)

    def _take(self, block: bool, timeout: float | None = None) -> _Request | None:
        """The next request: first those set aside for asking other layers, then the queue's."""
        if self._set_aside:
            return self._set_aside.popleft()
        try:
            return self._requests.get(block=block, timeout=timeout)
        except queue.Empty:
            return None

    def _gather(self, first: _Request) -> list[_Request]:
        requests, count, other_layers = [first], len(first.images), []
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            request = self._take(block=False)
            if request is None:
                remaining = deadline - time.monotonic()
                with self._lock:
                    others_decoding = self._decoding > 0
                if remaining <= 0 or not others_decoding:
                    break
                request = self._take(block=True, timeout=min(remaining, 0.005))
                if request is None:
                    continue
            if request.layers != first.layers:  # a pass has one set of outputs: serve it in a later pass
                other_layers.append(request)
                continue
            requests.append(request)
            count += len(request.images)
        self._set_aside.extend(other_layers)
        return requests
