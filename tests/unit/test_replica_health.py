"""A model replica's health from the requests it runs (no Ray)."""

from __future__ import annotations

import time

from serve_app.contract.errors import GenerationFailedError, InvalidImageError, InvalidRequestError
from serve_app.deployments.health import ReplicaHealth
from serve_app.model.types import ModelResult

OK = ModelResult(text="a cat", prompt_tokens=1, completion_tokens=2)
FAILED = GenerationFailedError("generation failed")


def test_a_replica_whose_requests_mostly_fail_in_the_model_is_unhealthy() -> None:
    health = ReplicaHealth(batch_timeout_s=60)
    health.batch_finished([OK, OK, FAILED])
    assert health.problem() is None
    for _ in range(3):  # every request fails on its own, as after a CUDA fault
        health.batch_finished([FAILED, FAILED])
    assert health.problem() == "7 of the last 9 requests failed in the model"


def test_callers_bad_inputs_do_not_count_against_the_replica() -> None:
    health = ReplicaHealth(batch_timeout_s=60)
    bad = [InvalidRequestError("too long", "prompt"), InvalidImageError("bad", "image")]
    for _ in range(10):
        health.batch_finished([*bad, OK])
    assert health.problem() is None


def test_recovery_pushes_old_failures_out_of_the_window() -> None:
    health = ReplicaHealth(batch_timeout_s=60, window=6)
    health.batch_finished([FAILED] * 4)
    assert health.problem() is not None
    health.batch_finished([OK] * 4)
    assert health.problem() is None


def test_a_batch_past_its_deadline_is_a_hang() -> None:
    health = ReplicaHealth(batch_timeout_s=0.05)
    health.batch_started()
    assert health.problem() is None
    time.sleep(0.1)
    assert health.problem() == "a batch has been generating for over 0.05 s"
    health.batch_finished([OK])
    assert health.problem() is None
