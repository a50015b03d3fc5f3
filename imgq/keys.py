"""Every Redis key imgq uses, built in one place: ``<namespace>:<noun>:<id>``.

The namespace prefixes every key (kombu's too), so that several deployments or test runs share one Redis
without seeing each other, and a clean-up can SCAN for ``<namespace>:*`` instead of flushing a database.
"""

from __future__ import annotations


class Keys:
    """Every Redis key imgq uses, as ``<namespace>:<noun>:<id>``."""

    def __init__(self, namespace: str):
        self.ns = namespace

    @property
    def jobs(self) -> str:
        """Sorted set of job ids, scored by creation time."""
        return f"{self.ns}:jobs"

    @property
    def expired(self) -> str:
        """Sorted set of the ids of jobs whose retention has passed, scored by when imgq found them gone: so
        that `imgq status JOB` says a job expired rather than that there is none (the most recent are kept)."""
        return f"{self.ns}:expired"

    def job(self, job: str) -> str:
        """Hash: the job record (name, created, parameters, total, timestamps, the files its walk skipped;
        ``publishing`` while its batches are being sent, ``held_retention`` while a schedule's job waits for the
        tick that settles it)."""
        return f"{self.ns}:job:{job}"

    def results(self, job: str) -> str:
        """Hash: image id -> result record (JSON). One field per image, so a redelivery overwrites."""
        return f"{self.ns}:results:{job}"

    def sunk(self, job: str) -> str:
        """Hash: batch number -> records that batch wrote to the job's Parquet sink (imgq/results/sink.py); their sum is
        kept in the job's hash (``sunk``), so a redelivered batch replaces its count instead of adding to it."""
        return f"{self.ns}:sunk:{job}"

    @property
    def sinks(self) -> str:
        """Set of the ids of jobs with a Parquet sink whose files may still be on disk: once such a job is gone
        (expired, deleted), the workers' reconciler removes its files (imgq/results/sink.py) and then its id."""
        return f"{self.ns}:sinks"

    def failed(self, job: str) -> str:
        """Set of image ids whose record is an error; a set, so a redelivery cannot count twice."""
        return f"{self.ns}:failed:{job}"

    def batches(self, job: str) -> str:
        """List: the job's batch messages (JSON) in order, kept to re-queue and to export in order."""
        return f"{self.ns}:batches:{job}"

    @property
    def active(self) -> str:
        """Set of the ids of jobs not yet done or cancelled: what the reconciler looks at."""
        return f"{self.ns}:active"

    def attempts(self, job: str) -> str:
        """Hash: batch number -> deliveries so far (the broker does not count redeliveries)."""
        return f"{self.ns}:attempts:{job}"

    def inflight(self, job: str) -> str:
        """Hash: batch number -> id of the worker classifying it now (removed when its records are stored)."""
        return f"{self.ns}:inflight:{job}"

    def suspects(self, job: str) -> str:
        """Hash: image id -> worker id, set while a batch in isolation decodes that image. Still there after
        a delivery, it names the image that killed the worker."""
        return f"{self.ns}:suspects:{job}"

    def known(self, model: str, top_k: int) -> str:
        """Hash: content digest of an image -> its packed top-k (or a claim while it is computed), for one
        model (weights, precision, and what else changes a score: its tag, ``model_tag``) and one k:
        imgq/results/known.py."""
        return f"{self.ns}:known:{model}:{top_k}"

    def head(self, digest: str) -> str:
        """String: a head's file (imgq/labels/heads.py) under its digest, for the workers of the jobs that apply it.
        Expires with the longest retention of those jobs (or a schedule's life)."""
        return f"{self.ns}:head:{digest}"

    @property
    def reconcile_lock(self) -> str:
        """String with a TTL: held by the one worker reconciling jobs at the moment."""
        return f"{self.ns}:reconcile-lock"

    def worker(self, hostname: str) -> str:
        """String with a TTL: a worker's heartbeat (JSON): starting, ready, or failed with its reason."""
        return f"{self.ns}:worker:{hostname}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.ns}:worker:*"

    @property
    def schedules(self) -> str:
        """Sorted set of schedule names, scored by creation time."""
        return f"{self.ns}:schedules"

    def schedule(self, name: str) -> str:
        """Hash: a schedule's definition (paths, when, submit options, paused) and its job in flight."""
        return f"{self.ns}:schedule:{name}"

    def schedule_runs(self, name: str) -> str:
        """List: the schedule's recent ticks (JSON), newest first, capped."""
        return f"{self.ns}:schedule:{name}:runs"

    def schedule_lock(self, name: str) -> str:
        """String with a TTL: held by the one tick of the schedule running, so two never interleave."""
        return f"{self.ns}:schedule:{name}:lock"

    def scan(self, name: str, part: str, model: str = "resnet50") -> str:
        """Hash: incremental scan state of a schedule for one model, ``part`` one of known, errors, pending
        (imgq/schedules/scan_state.py): ``<ns>:scan:<name>:<part>`` for resnet50 (as before models were a choice),
        ``<ns>:scan:<name>@<model>:<part>`` for any other, so that a file classified by one model is new
        for another."""
        # "resnet50" is imgq.contract.MODEL_NAME, which this module cannot import (contract imports it).
        return f"{self.ns}:scan:{name}:{part}" if model == "resnet50" else f"{self.ns}:scan:{name}@{model}:{part}"

    def scan_pattern(self, name: str) -> str:
        """SCAN pattern of a schedule's scan state for the models other than resnet50."""
        return f"{self.ns}:scan:{name}@*"

    @property
    def kombu_prefix(self) -> str:
        """Prefix of kombu's own keys (Celery's transport), so that they live under the namespace too."""
        return f"{self.ns}:kombu:"

    @property
    def kombu_queue(self) -> str:
        """List: the batch messages waiting in the queue of resnet50's workers (kombu LPUSHes, workers BRPOP)."""
        return self.kombu_prefix + self.ns

    def model_queue(self, queue: str) -> str:
        """List: the batch messages waiting in one model's queue, ``queue`` as imgq.celery_config.queue_name names
        it (``<ns>`` for resnet50, ``<ns>.<model>`` for any other; followed by ``@<16 hex>`` for the jobs that
        asked for weights: the queue of the workers with those weights, a digest of their key)."""
        return self.kombu_prefix + queue

    @property
    def kombu_unacked(self) -> str:
        """Hash: messages delivered to a worker and not yet acknowledged (kombu's visibility timeout)."""
        return self.kombu_prefix + "unacked"

    @property
    def redbeat_prefix(self) -> str:
        """Prefix of celery-redbeat's keys: ``<prefix><name>`` per schedule entry, ``<prefix>:schedule`` (its
        due times), ``<prefix>:lock`` (the one beat that fires)."""
        return f"{self.ns}:redbeat:"
