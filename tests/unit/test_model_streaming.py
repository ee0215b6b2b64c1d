"""Streaming, stop strings, cancellation and seeds in the model wrapper (tiny OPT and T5)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import torch

from serve_app.model.blip2 import Blip2Model
from serve_app.model.step_tracker import StepTracker, TrackedRow
from serve_app.model.types import ModelRequest
from tests.support.results import ok, request


class RecordingObserver:
    """Collects streamed deltas; cancels chosen requests after their first delta."""

    def __init__(self, cancel_after_first: frozenset[int] = frozenset()) -> None:
        self.deltas: dict[int, list[str]] = defaultdict(list)
        self._cancel_after_first = cancel_after_first

    def on_text(self, index: int, delta: str) -> None:
        self.deltas[index].append(delta)

    def is_cancelled(self, index: int) -> bool:
        return index in self._cancel_after_first and bool(self.deltas.get(index))


def streaming(r: ModelRequest) -> ModelRequest:
    return r.model_copy(update={"stream": True})


def test_streamed_deltas_add_up_to_the_result_in_a_mixed_batch(model: Blip2Model) -> None:
    requests = [
        streaming(request("What?", 0, max_new_tokens=12)),
        request("How many?", 1, max_new_tokens=12),
        streaming(request("", 2, task="caption", max_new_tokens=12)),
        streaming(request("a photo of", 3, task="caption", max_new_tokens=12)),
    ]
    observer = RecordingObserver()
    results = [ok(r) for r in model.generate(requests, observer)]
    assert set(observer.deltas) == {0, 2, 3}
    for index in (0, 2, 3):
        assert "".join(observer.deltas[index]) == results[index].text
        assert len(observer.deltas[index]) > 1, "the text came in one piece, not as generated"
    assert results == [ok(model.generate([r])[0]) for r in requests]


def test_a_stop_string_ends_the_text_before_it(model: Blip2Model) -> None:
    free = ok(model.generate([request("Why?", 4, max_new_tokens=16)])[0])
    words = free.text.split()
    assert len(words) > 2
    stop = words[2][:3]
    cut = free.text[: free.text.index(stop)].strip()
    observer = RecordingObserver()
    stopped = ok(
        model.generate(
            [streaming(request("Why?", 4, max_new_tokens=16, stop=[stop, "zzzz"]))], observer
        )[0]
    )
    assert stopped.text == cut
    assert stopped.finish_reason == "stop"
    assert stopped.completion_tokens < free.completion_tokens
    assert "".join(observer.deltas[0]) == cut


def test_length_is_the_finish_reason_at_max_new_tokens(model: Blip2Model) -> None:
    result = ok(model.generate([request("What?", 0, max_new_tokens=3)])[0])
    assert (result.completion_tokens, result.finish_reason) == (3, "length")


def test_a_cancelled_request_stops_early_and_the_others_are_unaffected(model: Blip2Model) -> None:
    requests = [streaming(request(f"What is {i}?", i, max_new_tokens=24)) for i in range(3)]
    observer = RecordingObserver(cancel_after_first=frozenset({1}))
    results = [ok(r) for r in model.generate(requests, observer)]
    alone = [ok(model.generate([r])[0]) for r in requests]
    assert results[1].completion_tokens < alone[1].completion_tokens
    assert [results[0], results[2]] == [alone[0], alone[2]]


def test_a_seed_makes_sampling_repeatable(model: Blip2Model) -> None:
    def sample(seed: int) -> str:
        params = {"do_sample": True, "temperature": 1.5, "max_new_tokens": 12, "seed": seed}
        return ok(model.generate([request("What?", 0, **params)])[0]).text

    assert sample(7) == sample(7)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_a_stream_retried_after_a_failure_mid_batch_is_not_sent_twice(
    model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch fails after a few steps (deltas already sent); its rows are retried one by
    one, and each stream goes on from what was sent instead of starting over."""
    requests = [
        streaming(request("What?", 0, max_new_tokens=12)),
        streaming(request("", 2, task="caption", max_new_tokens=12)),
    ]
    hf_model = model._model
    original = hf_model.generate
    calls = 0

    def fails_mid_batch(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        (tracker,) = kwargs["stopping_criteria"]
        if calls > 1:
            return original(**kwargs)
        steps = 0

        def step(input_ids: Any, scores: Any, **more: Any) -> Any:
            nonlocal steps
            steps += 1
            if steps > 4:
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return tracker(input_ids, scores, **more)

        return original(**{**kwargs, "stopping_criteria": [step]})

    observer = RecordingObserver()
    monkeypatch.setattr(hf_model, "generate", fails_mid_batch)
    results = [ok(r) for r in model.generate(requests, observer)]
    assert calls == 3  # the failed batch, then each row alone
    assert any(observer.deltas[index] for index in (0, 1)), "nothing was streamed before"
    for index, result in enumerate(results):
        assert "".join(observer.deltas[index]) == result.text


def test_rows_that_neither_stream_nor_stop_leave_their_tokens_on_the_device() -> None:
    def render(index: int, tokens: list[int]) -> tuple[str, bool]:
        raise AssertionError("a row nobody reads was rendered")

    class NothingCancelled:
        def on_text(self, index: int, delta: str) -> None:
            raise AssertionError("no row streams")

        def is_cancelled(self, index: int) -> bool:
            return index == 1

    rows = [TrackedRow(0, stream=False, stop=()), TrackedRow(1, stream=False, stop=())]
    tracker = StepTracker(rows, offset=2, render=render, observer=NothingCancelled())
    # A meta tensor has no data: reading its tokens (a device sync on a GPU) would raise.
    finished = tracker(torch.zeros((2, 3), dtype=torch.long, device="meta"), scores=None)
    assert finished.shape == (2,) and finished.dtype == torch.bool
    assert [row.finished for row in rows] == [False, True]  # only the cancelled row stops
