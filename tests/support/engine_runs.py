"""Driving an engine step by step, as the decoding loop would (no Ray, no thread)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from serve_app.engine.types import Admission, Engine
from serve_app.model.types import ModelRequest, ModelResult


@dataclass
class EngineRun:
    """What each request got: its streamed text, its outcome, and the step it ended in."""

    texts: dict[int, list[str]] = field(default_factory=dict)
    outcomes: dict[int, ModelResult | Exception] = field(default_factory=dict)
    ended_at: dict[int, int] = field(default_factory=dict)
    steps: int = 0


def run_engine(
    engine: Engine,
    joins: Mapping[int, Sequence[ModelRequest]],
    cancel_at: Mapping[int, Collection[int]] | None = None,
    max_steps: int = 500,
) -> EngineRun:
    """Step ``engine`` until every request has ended; ``joins[step]`` are admitted at that step
    (keys in order of joining), ``cancel_at[step]`` the keys cancelled then."""
    run = EngineRun()
    keys = iter(range(10**6))
    total = sum(len(requests) for requests in joins.values())
    cancelled: set[int] = set()
    for step in range(max_steps):
        admitted = [Admission(next(keys), request) for request in joins.get(step, ())]
        dropped = set((cancel_at or {}).get(step, ())) - run.outcomes.keys()
        cancelled |= dropped
        for event in engine.step(admitted, dropped):
            run.texts.setdefault(event.key, []).append(event.text)
            if event.outcome is not None:
                run.outcomes[event.key] = event.outcome
                run.ended_at[event.key] = step
        run.steps = step + 1
        if len(run.outcomes) + len(cancelled) >= total and step >= max(joins, default=0):
            return run
    raise AssertionError(f"requests still running after {max_steps} steps")


def alone(engine: Engine, requests: Sequence[ModelRequest]) -> list[ModelResult | Exception]:
    """Each request's outcome when it runs alone in the engine."""
    return [run_engine(engine, {0: [request]}).outcomes[0] for request in requests]


def without_batch_size(outcome: ModelResult | Exception) -> ModelResult | Exception:
    """The outcome with the batch it ran in left out (it differs between alone and batched)."""
    if isinstance(outcome, ModelResult):
        return outcome.model_copy(update={"batch_size": 1})
    return outcome
