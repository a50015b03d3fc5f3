"""Applying a head (imgq/labels/heads.py) to the pooled features of one forward pass.

A worker fetches a head from Redis the first time a batch names it and keeps it for the life of the
process, as arrays ready for one matrix product per batch: a head costs a batch a (n, 2048) x (2048, labels)
product, microseconds beside the forward pass it rides on.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from imgq.labels import heads
from imgq.labels.heads import Head, HeadError


@dataclass(frozen=True)
class LoadedHead:
    head: Head
    coef: np.ndarray  # (features, rows)
    intercept: np.ndarray  # (rows,)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Label probabilities ``(n, labels)`` for pooled features ``(n, features)`` (or ``(n, 1, 1, f)``).

        Finite features always give finite probabilities: logits that overflow (to +-inf) or are merely huge
        are clipped to +-LOGIT_LIMIT first, where the softmax and the sigmoid have long saturated to 0 and 1.
        Features that are not finite give rows that are not (the batch gives those images a head error)."""
        x = features.reshape(len(features), -1).astype(np.float64)
        if x.shape[1] != self.coef.shape[0]:
            raise HeadError(f"head {self.head.name!r} reads {self.coef.shape[0]} features; layer "
                            f"{self.head.feature_layer} gave {x.shape[1]}")
        # An overflow to +-inf is what the clip is for; inf - inf (NaN) in the product, a head error per image.
        with np.errstate(over="ignore", invalid="ignore"):
            logits = np.clip(x @ self.coef + self.intercept, -LOGIT_LIMIT, LOGIT_LIMIT)
        if self.head.activation == "sigmoid":  # two labels: the second is the positive class, as scikit-learn has it
            positive = _sigmoid(logits[:, 0])
            return np.stack([1.0 - positive, positive], axis=1)
        logits -= logits.max(axis=1, keepdims=True)  # inf - inf was NaN here before the clip
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def top(self, scores: np.ndarray, k: int) -> dict:
        """One image's head entry for its record: the ``k`` best labels, best first."""
        best = np.argsort(-scores, kind="stable")[:k]
        return {"name": self.head.name,
                "top_k": [{"label": self.head.labels[i], "score": float(scores[i])} for i in best]}


LOGIT_LIMIT = 1e300
# Any two clipped logits differ by at most 2e300, which float64 holds (the softmax's shift cannot overflow).
# Logits 700 apart already give probabilities of 0 and 1: the clip changes only logits beyond +-1e300, which
# only an overflow of the features times the coefficients gives.


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without an overflow: e^-|z| is at most 1, whatever z's sign."""
    small = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + small), small / (1.0 + small))


class HeadCache:
    """The heads this worker has applied, by digest, fetched once from Redis."""

    def __init__(self):
        self._heads: dict[str, LoadedHead] = {}
        self._lock = threading.Lock()

    def get(self, store, digest: str) -> LoadedHead:
        """Raises HeadError when Redis has no head of that digest or it is damaged."""
        with self._lock:
            if digest not in self._heads:
                head = heads.fetch(store.redis, store.keys, digest)
                self._heads[digest] = LoadedHead(head, np.asarray(head.coef, dtype=np.float64).T,
                                                 np.asarray(head.intercept, dtype=np.float64))
            return self._heads[digest]
