"""One model, many tasks: gather the images of concurrent tasks into shared forward passes.

A worker runs several tasks at once (Celery's threads pool). Each decodes its own images, then hands them
here and waits; one inference thread runs the model on whatever has arrived, up to the batch size. So:
- decoding of one task overlaps the forward pass of another, instead of the cores idling in turn;
- many small tasks (say 200 jobs of one image) share forward passes instead of running batches of one;
- TensorFlow sees one call at a time, which is what it is fastest at.

If the inference thread dies (an exception outside a forward pass), ``on_death`` is called: the worker
removes its heartbeat and exits at once (worker/process.py), its batches unacknowledged, so the reconciler
gives them to another worker; without it every task would wait for ever on a thread that is gone. A forward
pass that hangs costs its tasks ``pass_timeout``, after which their images get `internal` records
(worker/batches/batch.py); past twice that, ``problem()`` says so and the heartbeat thread ends the worker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
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

    def __init__(self, classifier, max_batch: int, max_wait: float = 0.05, pass_timeout: float = 600.0,
                 on_death: Callable[[str], None] | None = None):
        self.classifier = classifier
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.pass_timeout = pass_timeout
        self.on_death = on_death  # called from the dying thread with problem(); the worker exits there
        self.died: BaseException | None = None
        self._pass_started: float | None = None  # time.monotonic() of the forward pass running now
        self.weights_id = classifier.weights_id
        self._in_pass: list[_Request] = []  # the requests of the forward pass running now
        self._requests: queue.Queue[_Request] = queue.Queue()
        self._set_aside: deque[_Request] = deque()  # only the inference thread touches it
        self._decoding = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve_until_death, name="imgq-inference", daemon=True)
        self._thread.start()

    @property
    def precision(self) -> str:
        """The precision the classifier serves now (an INT8 runtime calibrating on the first images switches
        from fp32); each pass's own is in its result."""
        return self.classifier.precision

    def problem(self) -> str | None:
        """Why this gatherer can serve no more (its thread died, a forward pass hangs), or None."""
        if self.died is not None or not self._thread.is_alive():
            return f"the inference thread died ({type(self.died).__name__}: {self.died})"
        started = self._pass_started
        # Twice the tasks' own wait: the tasks of a hung pass have written their `internal` records by then.
        if started is not None and time.monotonic() - started > 2 * self.pass_timeout:
            return f"a forward pass has run for more than {2 * self.pass_timeout:.0f} s"
        return None

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
        image, the precision the pass ran in)``. Only requests asking for the same layers share a pass.
        """
        request = _Request(images, layers)
        if self.died is not None:
            request.future.set_exception(RuntimeError(self.problem()))
            return request.future
        self._requests.put(request)
        return request.future

    def _serve_until_death(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 (whatever it was, no task may wait for this thread now)
            self.died = exc
            log.critical("The inference thread died", exc_info=True)
            # The worker gives up first (on_death ends the process): a task told of the failure before that
            # would write `internal` records for images that another worker can still classify.
            if self.on_death is not None:
                self.on_death(self.problem())
            failure = RuntimeError(self.problem())
            for request in self._in_pass:  # the tasks of the pass that killed the thread learn it too
                if not request.future.done():
                    request.future.set_exception(failure)
            while (request := self._take(block=False)) is not None:
                request.future.set_exception(failure)

    def _serve(self) -> None:
        while True:
            self._in_pass = self._gather(self._take(block=True))
            self._forward(self._in_pass)
            self._in_pass = []

    def _forward(self, requests: list[_Request]) -> None:
        images = np.concatenate([r.images for r in requests])
        started = time.perf_counter()
        self._pass_started = time.monotonic()
        try:
            try:
                probabilities, activations = self.classifier.predict_with(images, requests[0].layers)
            finally:
                self._pass_started = None
        except Exception as exc:  # each waiting task gets the failure; the thread goes on serving
            for request in requests:
                request.future.set_exception(exc)
            return
        share_ms = (time.perf_counter() - started) * 1000 / max(len(images), 1)
        # Read in this thread, right after the pass: the runtime says which precision it just ran in.
        precision = getattr(self.classifier, "last_precision", None) or self.classifier.precision
        start = 0
        for request in requests:
            part = slice(start, start + len(request.images))
            request.future.set_result((probabilities[part], {k: v[part] for k, v in activations.items()}, share_ms,
                                       precision))
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
