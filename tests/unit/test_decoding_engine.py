"""``Blip2Engine``: rows join and leave one batch at every step, each with its own settings,
and greedy tokens are those of transformers' ``generate`` (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from serve_app.config import DEMO_SHAPES, ModelConfig
from serve_app.contract.errors import GenerationFailedError, InvalidRequestError
from serve_app.engine.blip2_engine import Blip2Engine
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import ModelRequest, ModelResult
from tests.support.engine_runs import alone, run_engine, without_batch_size
from tests.support.results import ok, request

MIXED = [
    request("What?", 0),
    request("How many people are standing next to the old red car in this photo?", 1, size=64),
    request("", 2, task="caption", size=30),
    request("a photo of", 3, task="caption", max_new_tokens=3),
    request("Describe the picture in detail:", 4, task="prompt", size=100, max_new_tokens=9),
]


def engine_of(model: Blip2Model, max_rows: int = 8, cache_bytes: int = 2**20) -> Blip2Engine:
    return Blip2Engine(model, max_rows=max_rows, feature_cache_bytes=cache_bytes)


def reference(model: Blip2Model, requests: list[ModelRequest]) -> list[Any]:
    """transformers' ``generate``, one request at a time."""
    return [without_batch_size(model.generate([r])[0]) for r in requests]


def test_greedy_tokens_are_generates_alone_and_when_rows_join_at_any_step(
    model: Blip2Model,
) -> None:
    expected = reference(model, MIXED)
    engine = engine_of(model)
    assert [without_batch_size(o) for o in alone(engine, MIXED)] == expected
    staggered = run_engine(engine, {0: MIXED[:1], 2: MIXED[1:3], 3: MIXED[3:]})
    assert [without_batch_size(staggered.outcomes[k]) for k in range(5)] == expected
    assert engine.running == 0


def test_the_demo_models_answers_are_generates_in_a_mixed_batch(cache_dir: Any) -> None:
    demo = Blip2Model.load(ModelConfig(model_id=DEMO_SHAPES))
    questions = [
        request(q, i, size=64, max_new_tokens=n)
        for i, (q, n) in enumerate(
            [("What shape is it?", 8), ("What colour is the circle?", 3), ("How many?", 12)]
        )
    ]
    expected = reference(demo, questions)
    run = run_engine(engine_of(demo), {0: questions[:2], 1: questions[2:]})
    assert [without_batch_size(run.outcomes[k]) for k in range(3)] == expected


def test_a_short_request_ends_at_once_beside_a_long_one(model: Blip2Model) -> None:
    long = request("Describe it:", 0, task="prompt", max_new_tokens=40)
    short = request("What?", 1, max_new_tokens=2)
    run = run_engine(engine_of(model), {0: [long], 3: [short]})
    assert ok(run.outcomes[1]).completion_tokens <= 2
    assert run.ended_at[1] <= 4 < run.ended_at[0]
    assert ok(run.outcomes[0]).batch_size == 2


def test_rows_are_bounded_and_a_freed_row_is_reused(model: Blip2Model) -> None:
    engine = engine_of(model, max_rows=2)
    with pytest.raises(ValueError, match="at most 2 rows"):
        run_engine(engine, {0: MIXED[:3]})
    assert engine.running == 0
    run = run_engine(engine, {0: MIXED[:2], 7: MIXED[2:3]})  # both ended by step 6
    assert [without_batch_size(run.outcomes[k]) for k in range(3)] == reference(model, MIXED[:3])


def test_each_row_keeps_its_own_settings_in_one_step(model: Blip2Model) -> None:
    sampled = {"do_sample": True, "temperature": 0.7, "top_p": 0.9, "max_new_tokens": 8}
    requests = [
        request("What?", 0, max_new_tokens=3),
        request("Why?", 1, repetition_penalty=1.5),
        request("Who?", 2, seed=11, **sampled),
        request("Where?", 3, seed=12, **{**sampled, "temperature": 1.5, "top_p": 1.0}),
        request("When?", 4, **sampled),
    ]
    engine = engine_of(model)
    together = run_engine(engine, {0: requests})
    assert [without_batch_size(together.outcomes[k]) for k in (0, 1)] == reference(
        model, requests[:2]
    )
    seeded = [without_batch_size(o) for o in alone(engine, requests[2:4])]
    assert [without_batch_size(together.outcomes[k]) for k in (2, 3)] == seeded
    again = run_engine(engine, {0: requests[::-1]})  # other neighbours, other rows
    assert [without_batch_size(again.outcomes[k]) for k in (2, 1)] == seeded
    assert 0 < ok(together.outcomes[4]).completion_tokens <= 8


def test_beam_search_runs_generates_own_path(model: Blip2Model) -> None:
    beams = request("Where is it?", 1, num_beams=2)
    run = run_engine(engine_of(model), {0: [MIXED[0], beams]})
    assert without_batch_size(run.outcomes[1]) == reference(model, [beams])[0]
    assert without_batch_size(run.outcomes[0]) == reference(model, MIXED[:1])[0]


def test_streamed_deltas_add_up_to_the_result_and_stop_strings_end_rows(
    model: Blip2Model,
) -> None:
    streaming = [r.model_copy(update={"stream": True}) for r in MIXED[:3]]
    plain = ok(alone(engine_of(model), streaming[:1])[0]).text
    stop = plain.split()[1] if len(plain.split()) > 1 else plain[1:3]
    stopped = MIXED[0].model_copy(
        update={"stream": True, "params": MIXED[0].params.model_copy(update={"stop": (stop,)})}
    )
    run = run_engine(engine_of(model), {0: streaming, 1: [stopped]})
    for key in range(4):
        result = ok(run.outcomes[key])
        assert "".join(run.texts[key]) == result.text
        assert len([t for t in run.texts[key] if t]) >= (2 if key < 3 else 1)
    assert stop not in ok(run.outcomes[3]).text
    assert ok(run.outcomes[3]).finish_reason == "stop"
    assert ok(run.outcomes[0]).finish_reason == "length"


def test_a_cancelled_row_leaves_and_the_others_are_unaffected(model: Blip2Model) -> None:
    run = run_engine(engine_of(model), {0: MIXED[:3]}, cancel_at={2: [1]})
    assert 1 not in run.outcomes
    assert [without_batch_size(run.outcomes[k]) for k in (0, 2)] == reference(
        model, [MIXED[0], MIXED[2]]
    )


def test_a_bad_request_fails_alone(model: Blip2Model) -> None:
    over = request("What?", 1, max_new_tokens=model.config.max_new_tokens_limit + 1)
    run = run_engine(engine_of(model), {0: [MIXED[0], over, MIXED[2]]})
    assert isinstance(run.outcomes[1], InvalidRequestError)
    assert [without_batch_size(run.outcomes[k]) for k in (0, 2)] == reference(
        model, [MIXED[0], MIXED[2]]
    )


def test_a_failed_step_recomputes_each_row_and_only_the_culprit_fails(
    opt_model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that fails whenever the long prompt is in the batch: the step that has it
    fails, every row is recomputed alone from its tokens so far, and only that row fails."""
    good = [request("What?", 0), request("a photo of", 1, task="caption")]
    poisoned = request("x" * 600, 2, task="prompt")
    streamed = good[0].model_copy(update={"stream": True})
    engine = engine_of(opt_model)
    runner = engine._runner
    decode, prefill = runner.decode, runner.prefill

    def fails_with_long_rows(rows: Any, *args: Any, **kwargs: Any) -> Any:
        if (rows.width if hasattr(rows, "width") else rows.shape[1]) > 100:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return (decode if hasattr(rows, "width") else prefill)(rows, *args, **kwargs)

    monkeypatch.setattr(runner, "decode", fails_with_long_rows)
    monkeypatch.setattr(runner, "prefill", fails_with_long_rows)
    run = run_engine(engine, {0: [streamed, good[1]], 2: [poisoned]})
    failure = run.outcomes[2]
    assert isinstance(failure, GenerationFailedError) and failure.__cause__ is not None
    expected = reference(opt_model, good)
    assert [without_batch_size(run.outcomes[k]) for k in (0, 1)] == expected
    assert "".join(run.texts[0]) == ok(run.outcomes[0]).text  # nothing sent twice


def test_image_features_are_encoded_once_per_image(
    model: Blip2Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = engine_of(model)
    encoded: list[int] = []
    vision = model.hf_model.vision_model
    original = vision.forward

    def counting(pixel_values: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        encoded.append(int(pixel_values.shape[0]))
        return original(pixel_values, *args, **kwargs)

    monkeypatch.setattr(vision, "forward", counting)
    questions = [request(q, 7) for q in ("What?", "Why?", "Who?", "Where?", "How many?")]
    expected = reference(model, questions)
    encoded.clear()
    first = run_engine(engine, {0: questions[:1]})
    later = run_engine(engine, {0: questions[1:3], 2: questions[3:]})
    assert encoded == [1]
    outcomes = [first.outcomes[0], *(later.outcomes[k] for k in range(4))]
    assert [without_batch_size(o) for o in outcomes] == expected
    stats = engine.stats()
    assert (stats.images_encoded, stats.feature_cache_hits) == (1, 4)
    assert stats.feature_cache_bytes > 0


def test_without_a_feature_cache_every_request_encodes_its_image(model: Blip2Model) -> None:
    engine = engine_of(model, cache_bytes=0)
    run_engine(engine, {0: [request("What?", 7)], 1: [request("Why?", 7)]})
    assert engine.stats().images_encoded == 2
    assert engine.stats().feature_cache_bytes == 0


def test_results_carry_the_most_rows_they_ran_beside() -> None:
    assert ModelResult(text="", prompt_tokens=0, completion_tokens=0).batch_size == 1
