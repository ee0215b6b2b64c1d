"""``DecodingLoop``: admission into free rows at every step, results as rows end, cancelled
rows dropped, and a step that fails as a whole fails only what it held (no Ray)."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from typing import ClassVar

import pytest

from serve_app.contract.errors import GenerationFailedError
from serve_app.engine.loop import DecodingLoop, StepReport
from serve_app.engine.types import Admission, EngineStats, RowEvent
from serve_app.model.types import ModelInfo, ModelRequest, ModelResult
from tests.support.results import image


class CountingFakeEngine:
    """A fake engine: a request whose text is ``n`` runs ``n`` steps, streaming one ``x`` per
    step; ``boom`` makes its step fail as a whole. Records each step's admissions."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.admitted: list[list[str]] = []
        self.cancelled: list[int] = []
        self.rows_per_step: list[int] = []
        self.cleared = 0
        self._left: dict[int, int] = {}

    def step(self, admitted: Sequence[Admission], cancelled: Collection[int]) -> list[RowEvent]:
        time.sleep(0.002)
        self.admitted.append([a.request.text for a in admitted])
        self.cancelled.extend(cancelled)
        for key in cancelled:
            self._left.pop(key, None)
        if any(a.request.text == "boom" for a in admitted):
            raise RuntimeError("the device fell over")
        self._left.update((a.key, int(a.request.text)) for a in admitted)
        assert len(self._left) <= self.max_rows
        self.rows_per_step.append(len(self._left))
        events = []
        for key in list(self._left):
            self._left[key] -= 1
            if self._left[key] == 0:
                del self._left[key]
                events.append(
                    RowEvent(
                        key, "x", ModelResult(text="done", prompt_tokens=0, completion_tokens=1)
                    )
                )
            else:
                events.append(RowEvent(key, "x"))
        return events

    def clear(self) -> None:
        self.cleared += 1
        self._left.clear()

    def info(self) -> ModelInfo:
        return ModelInfo(
            source="fake", family="opt", dtype="float32", device="cpu", num_query_tokens=0
        )

    def stats(self) -> EngineStats:
        return EngineStats()


class RecordingSink:
    """Collects a request's text and outcome; can be cancelled like a caller who left."""

    finished_order: ClassVar[list[str]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = ""
        self.outcome: ModelResult | Exception | None = None
        self.done = threading.Event()
        self.cancelled = False
        self.admitted = False

    def admit(self) -> None:
        self.admitted = True

    def put_text(self, delta: str) -> None:
        self.text += delta

    def finish(self, outcome: ModelResult | Exception) -> None:
        self.outcome = outcome
        RecordingSink.finished_order.append(self.name)
        self.done.set()


def submit(loop: DecodingLoop, *texts: str) -> list[RecordingSink]:
    sinks = [RecordingSink(text) for text in texts]
    loop.submit([(ModelRequest(task="prompt", text=s.name, image=image(0)), s) for s in sinks])
    return sinks


def wait(sinks: list[RecordingSink]) -> None:
    for sink in sinks:
        assert sink.done.wait(10), f"{sink.name} never finished"


def test_rows_are_bounded_admissions_capped_per_step_and_short_rows_end_first() -> None:
    RecordingSink.finished_order = []
    engine = CountingFakeEngine(max_rows=3)
    loop = DecodingLoop(engine, post=lambda callback: callback())
    loop.configure(max_rows=None, max_prefills_per_step=2)
    sinks = submit(loop, "9", "2", "9", "1", "1")
    wait(sinks)
    assert [len(step) for step in engine.admitted[:2]] == [2, 1]  # 2 a step, 3 rows at most
    assert max(engine.rows_per_step) == 3
    assert RecordingSink.finished_order.index("2") < RecordingSink.finished_order.index("9")
    assert [s.text for s in sinks] == ["x" * 9, "xx", "x" * 9, "x", "x"]
    assert all(s.admitted for s in sinks)
    assert not loop.busy and loop.free_rows == 3


def test_a_freed_row_is_taken_at_the_next_step() -> None:
    engine = CountingFakeEngine(max_rows=1)
    loop = DecodingLoop(engine, post=lambda callback: callback())
    wait(submit(loop, "2", "3"))
    assert engine.admitted[:4] == [["2"], [], ["3"], []]


def test_cancelled_requests_are_never_admitted_and_running_ones_leave() -> None:
    engine = CountingFakeEngine(max_rows=1)
    loop = DecodingLoop(engine, post=lambda callback: callback())
    running, waiting, last = submit(loop, "200", "1", "1")
    waiting.cancelled = True
    time.sleep(0.05)
    running.cancelled = True
    wait([last])
    assert running.outcome is None and waiting.outcome is None
    assert running.admitted and not waiting.admitted
    assert ["1"] in engine.admitted and engine.admitted.count(["1"]) == 1
    assert engine.cancelled == [0]


def test_a_step_that_fails_as_a_whole_fails_what_it_held_and_the_loop_goes_on() -> None:
    engine = CountingFakeEngine(max_rows=4)
    reports: list[StepReport] = []

    class Observer:
        def step_started(self) -> None:
            pass

        def step_finished(self, report: StepReport) -> None:
            reports.append(report)

    loop = DecodingLoop(engine, post=lambda callback: callback(), observer=Observer())
    held = submit(loop, "50")
    time.sleep(0.02)
    boom = submit(loop, "boom")
    wait(held + boom)
    assert all(isinstance(s.outcome, GenerationFailedError) for s in held + boom)
    assert "device" not in str(boom[0].outcome)
    assert engine.cleared == 1
    after = submit(loop, "2")
    wait(after)
    assert isinstance(after[0].outcome, ModelResult)
    assert any(len(r.outcomes) == 2 for r in reports)  # the failed step ended both


def test_live_rows_move_within_the_engines_bound() -> None:
    loop = DecodingLoop(CountingFakeEngine(max_rows=4), post=lambda callback: callback())
    with pytest.raises(ValueError, match="exceeds the 4 rows"):
        loop.configure(max_rows=5, max_prefills_per_step=None)
    loop.configure(max_rows=2, max_prefills_per_step=None)
    assert loop.max_rows == 2 and loop.free_rows == 2


def test_the_loop_outlives_a_step_that_fails_outside_the_engine() -> None:
    class BrokenObserver:
        def step_started(self) -> None:
            pass

        def step_finished(self, report: StepReport) -> None:
            raise RuntimeError("metrics backend gone")

    loop = DecodingLoop(
        CountingFakeEngine(max_rows=2), post=lambda callback: callback(), observer=BrokenObserver()
    )
    first, second = submit(loop, "1", "3")
    wait([first, second])  # each ended: answered, or failed with the step it was in
    again = submit(loop, "1")
    wait(again)
    assert isinstance(again[0].outcome, ModelResult)
