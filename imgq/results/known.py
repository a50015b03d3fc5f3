"""The content-hash index: images already classified, so that the same picture is paid for once.

For one model (its id, weights and precision, and what else changes a score: ``model_tag``) and one k, a Redis
hash maps a 16-byte digest of the file's bytes to its top-k, packed as "R" + k x (class index uint16, score
float32): with k = 5, 73 bytes per known image on Valkey 9.1 and 112 on Redis 7.0, at most 120 (MEMORY USAGE
over 2,000 images; tests/test_known.py pins it).
While a worker computes an image, the field holds a claim instead, so that copies of it in other batches, in
this worker or another, wait for the result rather than recompute.
"""

from __future__ import annotations

import hashlib
import struct
import time
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import redis

from imgq.contract import MODEL_NAME
from imgq.keys import Keys

DIGEST_BYTES = 16
RESULT, CLAIM = b"R", b"C"  # the first byte tells a result from a claim
# A claim older than this is taken to belong to a worker that died: the image is computed again.
CLAIM_SECONDS = 120.0
REFRESH_MEMORY_SECONDS = 24 * 3600  # how long a --force job remembers which digests it already refreshed


HASH_CHUNK_BYTES = 1 << 20  # hashing holds one chunk at a time, whatever the file's size


def file_digest(data: bytes) -> bytes:
    """The index's digest of an image's bytes."""
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


def stream_digest(file: BinaryIO, limit: int) -> bytes | None:
    """``file_digest`` of what ``file`` holds, read in chunks; None for a file of more than ``limit`` bytes.

    A file over the limit is simply not indexed: the worker refuses it as ``too_large`` anyway, and reading
    gigabytes to index it would hold a batch for minutes.
    """
    digest = hashlib.blake2b(digest_size=DIGEST_BYTES)
    read = 0
    while chunk := file.read(HASH_CHUNK_BYTES):
        read += len(chunk)
        if read > limit:
            return None
        digest.update(chunk)
    return digest.digest()


def model_tag(weights_id: str, precision: str, model_id: str = MODEL_NAME, head: str = "", scoring: str = "") -> str:
    """A short, key-safe name for what made the results an index holds: a picture classified by one model
    is not known for another, nor for the same model fed otherwise.

    It covers everything that changes a score: the model's id (name and file digest), its weights and
    precision, and ``scoring`` (imgq.models.spec.scoring_digest: the manifest's preprocessing, resize,
    interpolation and outputs, the input size, IMGQ_JPEG_DRAFT; its docstring says what is left out and
    why). resnet50's tag is what it was before models were a choice, and a built-in's what it was before
    ``scoring`` existed, as long as ``scoring`` is "" (the built-in's own feeding, the default decoding), so
    that their indexes stay valid. With a head (its digest), an index of its own whose entries hold the head's
    labels too."""
    model = "" if model_id == MODEL_NAME else f"{model_id}|"
    extra = (f"|head:{head}" if head else "") + (f"|scoring:{scoring}" if scoring else "")
    return hashlib.sha1(f"{model}{weights_id}|{precision}{extra}".encode()).hexdigest()[:12]


def pack(top: list[tuple[int, float]], head: list[tuple[int, float]] | None = None) -> bytes:
    """``R`` + the top-k as (class index u16, score f32); in a head's index, ``R`` + k u8 + the top-k + the
    head's labels the same way (the index of a head holds nothing else, so the two layouts never mix)."""
    entries = b"".join(struct.pack("<Hf", index, score) for index, score in top)
    if head is None:
        return RESULT + entries
    return RESULT + bytes([len(top)]) + entries + b"".join(struct.pack("<Hf", i, s) for i, s in head)


def unpack(value: bytes) -> list[tuple[int, float]]:
    return [struct.unpack_from("<Hf", value, offset) for offset in range(len(RESULT), len(value), 6)]


def unpack_with_head(value: bytes) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """``(top-k, head labels)`` of a value of a head's index (see ``pack``)."""
    k = value[1]
    entries = [struct.unpack_from("<Hf", value, offset) for offset in range(2, len(value), 6)]
    return entries[:k], entries[k:]


def _claim() -> bytes:
    return CLAIM + struct.pack("<d", time.time())


@dataclass
class Asked:
    """What the index answered for a batch's digests (``KnownImages.ask``): ``known`` holds the results it
    had, ``mine`` the digests this caller claimed and must classify (then ``tell``), ``theirs`` those another
    batch is classifying right now (``tell`` waits for them)."""

    known: dict[bytes, Any] = field(default_factory=dict)
    mine: set[bytes] = field(default_factory=set)
    theirs: set[bytes] = field(default_factory=set)


class KnownImages:
    """The index of one model, weights, precision, scoring digest (``model_tag``) and k; with ``head`` (a head's
    digest), the index of that head on top of them, whose values carry the head's labels too (``pack``):
    results are top-k lists, or (top-k, head labels) pairs in a head's index."""

    def __init__(self, client: redis.Redis, keys: Keys, weights_id: str, precision: str, top_k: int,
                 model_id: str = MODEL_NAME, head: str = "", scoring: str = ""):
        self.redis = client
        self.head = head
        self.key = keys.known(model_tag(weights_id, precision, model_id, head, scoring), top_k)

    def ask(self, digests: list[bytes], skip_known: bool = True, refresh_for: str | None = None) -> Asked:
        """The first of the two calls a batch makes: which of ``digests`` are answered, which are the caller's
        to classify, which another batch is classifying. ``skip_known`` False (``--force``, with
        ``refresh_for`` its job id) claims even the answered ones, once per job, to answer them anew."""
        known = self.lookup(digests) if skip_known else {}
        wanted = [d for d in digests if d not in known]
        mine = self.claim(wanted, refresh_for=refresh_for)
        return Asked(known, mine, {d for d in wanted if d not in mine})

    def tell(self, asked: Asked, answers: dict[bytes, Any], timeout: float) -> dict[bytes, Any]:
        """The second call: store ``answers`` (results by digest, for digests of ``asked.mine``), release the
        claims of the rest of ``asked.mine`` (their image could not be classified: the next batch to see it
        tries again), then wait up to ``timeout`` seconds for ``asked.theirs``. Returns the results of theirs
        that arrived; the caller classifies the others itself (their batch died or failed them)."""
        self.remember({d: r for d, r in answers.items() if d in asked.mine})
        self.release([d for d in asked.mine if d not in answers])
        return self.wait_for(asked.theirs, timeout) if asked.theirs else {}

    def lookup(self, digests: list[bytes]) -> dict[bytes, list[tuple[int, float]]]:
        """The known top-k of those of ``digests`` that have one (claims are not results)."""
        values = self.redis.hmget(self.key, digests) if digests else []
        return {d: self._decode(v) for d, v in zip(digests, values, strict=True) if v and not v.startswith(CLAIM)}

    def claim(self, digests: list[bytes], refresh_for: str | None = None) -> set[bytes]:
        """Claim the computing of ``digests``; returns those this caller got (the others are someone's).

        A claim older than CLAIM_SECONDS is taken over. ``refresh_for`` (--force, a job id): a result is
        taken over too, once per job, so that copies in the job's other batches use the new one.
        """
        pipe = self.redis.pipeline(transaction=False)
        for digest in digests:
            pipe.hsetnx(self.key, digest, _claim())
        claimed = {d for d, won in zip(digests, pipe.execute(), strict=True) if won}
        return claimed | self._take_over(set(digests) - claimed, refresh_for)

    def _take_over(self, digests: set[bytes], refresh_for: str | None) -> set[bytes]:
        taken = set()
        for digest in digests:
            value = self.redis.hget(self.key, digest)
            is_claim = value is not None and value.startswith(CLAIM)
            stale = is_claim and time.time() - struct.unpack("<d", value[1:])[0] > CLAIM_SECONDS
            if value is None or stale or (refresh_for and not is_claim and self._first_refresh(refresh_for, digest)):
                self.redis.hset(self.key, digest, _claim())
                taken.add(digest)
        return taken

    def _first_refresh(self, job: str, digest: bytes) -> bool:
        key = f"{self.key}:refreshed:{job}"
        pipe = self.redis.pipeline(transaction=True)
        pipe.sadd(key, digest)
        pipe.expire(key, REFRESH_MEMORY_SECONDS)
        return bool(pipe.execute()[0])

    def remember(self, results: dict[bytes, Any]) -> None:
        """Store results by digest: top-k lists, or (top-k, head labels) pairs in a head's index."""
        if results:
            encode = (lambda r: pack(*r)) if self.head else pack
            self.redis.hset(self.key, mapping={d: encode(r) for d, r in results.items()})

    def _decode(self, value: bytes) -> Any:
        return unpack_with_head(value) if self.head else unpack(value)

    def release(self, digests: list[bytes]) -> None:
        """Drop claims whose image could not be classified (the next one to try may succeed)."""
        if digests:
            self.redis.hdel(self.key, *digests)

    def wait_for(self, digests: set[bytes], timeout: float) -> dict[bytes, Any]:
        """Results of images others are computing, as they arrive, for up to ``timeout`` seconds. Stops
        waiting for an image whose claim was released (it failed there): the caller computes it."""
        found: dict[bytes, Any] = {}
        pending = list(digests)
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            values = self.redis.hmget(self.key, pending)
            found.update({d: self._decode(v) for d, v in zip(pending, values, strict=True)
                          if v and v.startswith(RESULT)})
            pending = [d for d, v in zip(pending, values, strict=True) if v and v.startswith(CLAIM)]
            if pending:
                time.sleep(0.1)
        return found
