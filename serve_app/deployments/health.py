"""``ReplicaHealth``: whether a model replica still works, from the batches it runs (no Ray).

A broken accelerator rarely fails whole batches: after a CUDA fault every request fails on its
own, each as a per-request error. So health is judged on recent requests: when most of them
fail with model errors (a caller's bad input does not count), or a batch runs far past its
deadline (a hung ``generate``), the replica reports itself unhealthy and Serve replaces it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

from serve_app.contract.errors import InvalidImageError, InvalidRequestError

CLIENT_ERRORS = (InvalidRequestError, InvalidImageError)
"""Failures that are the caller's, not the model's."""


class ReplicaHealth:
    """Tracks the last ``window`` requests' outcomes and the batch in progress."""

    def __init__(
        self,
        batch_timeout_s: float,
        window: int = 20,
        min_requests: int = 3,
        max_failure_ratio: float = 0.5,
    ) -> None:
        self._batch_timeout_s = batch_timeout_s
        self._recent: deque[bool] = deque(maxlen=window)
        self._min_requests = min_requests
        self._max_failure_ratio = max_failure_ratio
        self._batch_started: float | None = None

    def batch_started(self) -> None:
        """A batch began generating (from the generating thread)."""
        self._batch_started = time.monotonic()

    def batch_finished(self, outcomes: Sequence[object]) -> None:
        """A batch ended with these per-request outcomes."""
        self._batch_started = None
        for outcome in outcomes:
            if not isinstance(outcome, CLIENT_ERRORS):
                self._recent.append(isinstance(outcome, Exception))

    def problem(self) -> str | None:
        """Why the replica is unhealthy, or None while it is healthy."""
        started = self._batch_started
        if started is not None and time.monotonic() - started > self._batch_timeout_s:
            return f"a batch has been generating for over {self._batch_timeout_s:g} s"
        failed = sum(self._recent)
        if len(self._recent) >= self._min_requests and failed > self._max_failure_ratio * len(
            self._recent
        ):
            return f"{failed} of the last {len(self._recent)} requests failed in the model"
        return None
