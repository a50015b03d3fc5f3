"""Forward passes shared between concurrent tasks (worker/batches/gather.py)."""

import threading
import time

import numpy as np
import pytest

from worker.batches.gather import Gatherer


class RecordingClassifier:
    """Probabilities that encode each image (its first pixel value), and the size of every forward pass."""

    weights_id, precision = "test", "fp32"

    def __init__(self, fail=False):
        self.passes: list[int] = []
        self.fail = fail

    def predict_with(self, images, layers):
        self.passes.append((len(images), layers) if layers else len(images))
        if self.fail:
            raise RuntimeError("out of memory")
        out = np.zeros((len(images), 1000), dtype=np.float32)
        out[np.arange(len(images)), images[:, 0, 0, 0].astype(int)] = 1
        return out, {name: images[:, 0, 0, 0] * 10 for name in layers}


def images(*values):
    return np.stack([np.full((224, 224, 3), v, dtype=np.float32) for v in values])


# Where a test shows that a pass waits for the tasks still decoding, ``max_wait`` is far longer than a busy machine
# can delay a thread: the pass goes once the last of them has submitted, and a bound of 2 s let a thread that was
# late by that much miss the pass.
LONG_WAIT = 60.0


def test_concurrent_tasks_share_one_forward_pass_and_get_their_own_rows():
    classifier = RecordingClassifier()
    gatherer = Gatherer(classifier, max_batch=32, max_wait=LONG_WAIT)
    all_decoding, results = threading.Barrier(3), {}

    def task(name, values, delay):
        with gatherer.decoding():
            all_decoding.wait()
            time.sleep(delay)  # decoding
            future = gatherer.submit(images(*values))
        results[name] = future.result()[0].argmax(axis=1).tolist()

    threads = [threading.Thread(target=task, args=(name, values, delay))
               for name, values, delay in [("a", (1, 2), 0.0), ("b", (3,), 0.1), ("c", (4, 5, 6), 0.2)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {"a": [1, 2], "b": [3], "c": [4, 5, 6]}
    assert classifier.passes == [6]


def test_a_lone_task_does_not_wait():
    gatherer = Gatherer(RecordingClassifier(), max_batch=32, max_wait=LONG_WAIT)
    started = time.monotonic()
    with gatherer.decoding():
        future = gatherer.submit(images(7))
    probabilities, _, share_ms, _ = future.result(timeout=LONG_WAIT / 2)
    assert time.monotonic() - started < LONG_WAIT / 2 and probabilities.argmax() == 7 and share_ms >= 0


def test_full_batches_go_at_once_even_while_others_decode():
    classifier = RecordingClassifier()
    gatherer = Gatherer(classifier, max_batch=2, max_wait=LONG_WAIT)
    with gatherer.decoding():  # another task "decoding" for ever
        started = time.monotonic()
        gatherer.submit(images(1, 2)).result(timeout=LONG_WAIT / 2)
    assert time.monotonic() - started < LONG_WAIT / 2 and classifier.passes == [2]


def test_a_failed_forward_pass_reaches_every_waiting_task_and_serving_goes_on():
    classifier = RecordingClassifier(fail=True)
    gatherer = Gatherer(classifier, max_batch=32)
    with pytest.raises(RuntimeError, match="out of memory"):
        gatherer.submit(images(1)).result(timeout=2)
    classifier.fail = False
    assert gatherer.submit(images(2)).result(timeout=2)[0].argmax() == 2


def test_only_requests_for_the_same_layers_share_a_pass():
    classifier = RecordingClassifier()
    gatherer = Gatherer(classifier, max_batch=32, max_wait=LONG_WAIT)
    with gatherer.decoding():  # keeps the first pass waiting for more, so that all three are queued
        plain = gatherer.submit(images(1))
        dumped = gatherer.submit(images(2, 3), layers=("avg_pool",))
        plain_too = gatherer.submit(images(4))
    assert plain.result(timeout=30)[1] == {} and plain_too.result(timeout=30)[0].argmax() == 4
    probabilities, activations, _, _ = dumped.result(timeout=30)
    assert probabilities.argmax(axis=1).tolist() == [2, 3] and activations["avg_pool"].tolist() == [20, 30]
    assert sorted(classifier.passes, key=str) == sorted([2, (2, ("avg_pool",))], key=str)


class DyingClassifier(RecordingClassifier):
    """Kills the inference thread itself (an exception no forward pass catches), or hangs."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.release = threading.Event()

    def predict_with(self, images, layers):
        if self.how == "die":
            raise SystemExit("gone")
        self.release.wait(30)  # "hang"
        return super().predict_with(images, layers)


def test_a_dead_inference_thread_fails_every_task_and_says_so():
    gatherer = Gatherer(DyingClassifier("die"), max_batch=4)
    first = gatherer.submit(images(1))
    with pytest.raises(RuntimeError, match="inference thread died"):  # an Exception: the task records `internal`
        first.result(timeout=10)
    deadline = time.monotonic() + 10
    while gatherer.problem() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "inference thread died" in gatherer.problem()
    later = gatherer.submit(images(2))  # no thread will ever serve it: it fails at once
    with pytest.raises(RuntimeError, match="inference thread died"):
        later.result(timeout=1)


def test_a_hung_forward_pass_is_a_problem_after_twice_the_timeout():
    classifier = DyingClassifier("hang")
    gatherer = Gatherer(classifier, max_batch=4, pass_timeout=0.2)
    future = gatherer.submit(images(1))
    with pytest.raises(TimeoutError):
        future.result(timeout=0.2)  # what a task does (worker/batches/batch.py): its images become `internal`
    # Twice the timeout after the pass began, which the inference thread may do well after the submit on a
    # busy machine: waited for, not slept (0.3 s more than the task's wait was too little then).
    deadline = time.monotonic() + 10
    while gatherer.problem() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "forward pass has run for more than" in (gatherer.problem() or "")
    classifier.release.set()
    assert future.result(timeout=10)[0].shape == (1, 1000)
    assert gatherer.problem() is None
