"""Load shedding by expected wait: the busy-time rate, the budget, and the handlers using it."""

from __future__ import annotations

import asyncio
import itertools
from contextlib import AbstractContextManager

import pytest

from serve_app.config import LimitsConfig, ModelConfig
from serve_app.contract.api import ImageSource, VQARequest
from serve_app.contract.errors import ModelOverloadedError
from serve_app.images import sources
from serve_app.ingress.admission import Admission, BusyRate
from serve_app.ingress.handlers import Blip2Handlers
from serve_app.model.types import ModelRequest, ModelResult
from tests.support.images import image_bytes
from tests.unit.test_handlers import FakeModelBackend


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def serve_at(rate: BusyRate, clock: FakeClock, per_second: float, count: int) -> None:
    """``count`` requests one after another, each taking ``1 / per_second``."""
    for _ in range(count):
        rate.started()
        clock.now += 1 / per_second
        rate.finished(completed=True)


def test_the_rate_counts_busy_time_only_so_idle_spells_do_not_dilute_it() -> None:
    clock = FakeClock()
    rate = BusyRate(half_life_s=2.0, clock=clock)
    assert rate.per_second() is None
    serve_at(rate, clock, per_second=50, count=200)
    clock.now += 600  # ten idle minutes
    assert rate.per_second() == pytest.approx(50, rel=0.01)


def test_the_rate_follows_the_model_within_a_few_half_lives_of_busy_time() -> None:
    clock = FakeClock()
    rate = BusyRate(half_life_s=2.0, clock=clock)
    serve_at(rate, clock, per_second=10, count=100)
    serve_at(rate, clock, per_second=80, count=80 * 8)  # 8 s: four half-lives
    measured = rate.per_second()
    assert measured is not None and 70 < measured <= 80


def test_failed_requests_leave_the_backlog_without_counting_as_served() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    serve_at(rate, clock, per_second=20, count=40)
    before = rate.per_second()
    rate.started()
    clock.now += 1.0
    rate.finished(completed=False)
    after = rate.per_second()
    assert rate.in_flight == 0
    assert before is not None and after is not None and after < before


def hold(admission: Admission, count: int) -> list[AbstractContextManager[None]]:
    """``count`` requests admitted and still in work (while the caller keeps the list)."""
    held = []
    for _ in range(count):
        context = admission.admitted()
        context.__enter__()
        held.append(context)
    return held


def test_requests_are_refused_once_the_backlog_exceeds_the_budget_with_its_retry_after() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    admission = Admission(budget_s=2.0, rate=rate, clock=clock)
    held = hold(admission, 1)  # waits while 200 others are served at 10/s: a queue shows
    serve_at(rate, clock, per_second=10, count=200)
    held += hold(admission, 19)  # 20 requests ahead at 10/s: a 2 s wait, exactly the budget
    assert admission.expected_wait_s() == pytest.approx(2.0, rel=0.03)
    admission.check()
    for _ in range(15):
        rate.started()  # 35 ahead: 3.5 s
    with pytest.raises(ModelOverloadedError) as refused:
        admission.check()
    assert refused.value.retry_after_s == pytest.approx(1.5, abs=0.1)  # over the budget by
    assert refused.value.status_code == 503


def test_a_burst_after_a_quiet_spell_is_admitted_until_a_queue_shows() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    admission = Admission(budget_s=2.0, rate=rate, clock=clock)
    serve_at(rate, clock, per_second=2, count=50)  # one at a time, each waiting out a batch
    # 40 at 2 per second look like 20 s of waiting, but one batch may serve them all at once.
    held = hold(admission, 40)
    assert admission.expected_wait_s() > 2.0 * 5 and len(held) == 40
    clock.now += 0.9
    admission.check()
    clock.now += 0.2  # the oldest has waited over half the budget: the queue is real
    with pytest.raises(ModelOverloadedError):
        admission.check()


def test_before_the_first_completion_requests_are_refused_only_once_the_wait_is_sure() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    admission = Admission(budget_s=2.0, rate=rate)
    for _ in range(400):  # a burst into a fresh replica: nothing is known, all are admitted
        admission.check()
        rate.started()
    clock.now += 0.1  # no answer after 0.1 s with 400 ahead: at least 40 s of waiting
    with pytest.raises(ModelOverloadedError) as refused:
        admission.check()
    assert refused.value.retry_after_s == 1
    rate.finished(completed=True)
    assert rate.per_second() is not None


def test_no_budget_admits_everything() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    admission = Admission(budget_s=None, rate=rate, clock=clock)
    held = hold(admission, 1)
    serve_at(rate, clock, per_second=1, count=5)
    held += hold(admission, 1000)
    admission.check()


class SerialFakeModel(FakeModelBackend):
    """Stands in for a model replica that serves one request at a time, each in 50 ms."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = asyncio.Lock()
        self.waiting = 0
        self.most_waiting = 0

    async def generate(self, request: ModelRequest) -> ModelResult:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            async with self._lock:
                await asyncio.sleep(0.05)
                return await super().generate(request)
        finally:
            self.waiting -= 1


def test_sustained_load_past_the_budget_is_refused_and_the_admitted_wait_within_it() -> None:
    model = SerialFakeModel()
    handlers = Blip2Handlers(
        model, ModelConfig(model_id="fake"), LimitsConfig(max_queue_wait_s=0.25)
    )
    request = VQARequest(image=ImageSource.from_bytes(image_bytes(0)), question="q")
    served: list[float] = []  # how long each admitted request took
    refused = 0

    async def client(until: float) -> None:
        nonlocal refused
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            started = loop.time()
            try:
                await handlers.vqa(request)
            except ModelOverloadedError as error:
                refused += 1
                assert error.retry_after_s is not None and error.retry_after_s > 0
                await asyncio.sleep(error.retry_after_s)
                continue
            served.append(loop.time() - started)

    async def scenario() -> None:
        for _ in range(5):  # the rate is measured: 20 per second
            await handlers.vqa(request)
        until = asyncio.get_running_loop().time() + 2.0
        await asyncio.gather(*(client(until) for _ in range(20)))

    asyncio.run(scenario())
    assert refused >= 20
    # The first wave of 20 is admitted whole (no queue yet); after it, admitted requests wait
    # about the budget: 0.25 s, plus a request's own 50 ms and the refused callers' return.
    later = sorted(served[20:])
    assert later and later[int(0.9 * len(later))] < 0.6, later
    assert len(model.requests) == 5 + len(served)


def test_refused_callers_are_given_turns_spaced_at_the_service_rate() -> None:
    clock = FakeClock()
    rate = BusyRate(clock=clock)
    admission = Admission(budget_s=1.0, rate=rate, clock=clock)
    held = hold(admission, 1)
    serve_at(rate, clock, per_second=10, count=200)
    assert admission.oldest_wait_s() == pytest.approx(20.0) and held
    for _ in range(14):
        rate.started()  # 15 ahead at 10/s: 1.5 s, half a second over the budget
    turns = []
    for _ in range(100):
        with pytest.raises(ModelOverloadedError) as refused:
            admission.check()
        assert refused.value.retry_after_s is not None
        turns.append(refused.value.retry_after_s)
    assert turns[0] == pytest.approx(0.5, abs=0.05)  # the excess drained
    # Each comes back one service interval (0.1 s) after the one refused before it.
    gaps = [later - earlier for earlier, later in itertools.pairwise(turns)]
    assert gaps == pytest.approx([0.1] * 99, abs=0.02)


def test_time_spent_fetching_an_image_url_is_not_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow_fetch(url: str, limits: LimitsConfig, param: str) -> bytes:
        """Stands in for a URL whose server answers after half a second."""
        await asyncio.sleep(0.5)
        return image_bytes(1)

    monkeypatch.setattr(sources, "fetch_image_url", slow_fetch)
    model = SerialFakeModel()
    handlers = Blip2Handlers(
        model, ModelConfig(model_id="fake"), LimitsConfig(max_queue_wait_s=0.25)
    )
    upload = VQARequest(image=ImageSource.from_bytes(image_bytes(0)), question="q")
    by_url = VQARequest(image=ImageSource(url="https://images.example/1.png"), question="q")

    async def scenario() -> list[str]:
        for _ in range(5):
            await handlers.vqa(upload)
        # Ten requests fetching for 0.2 s would look like half a second of backlog at 20/s.
        fetching = [asyncio.create_task(handlers.vqa(by_url)) for _ in range(10)]
        await asyncio.sleep(0.2)
        answers = [(await handlers.vqa(upload)).answer for _ in range(3)]
        await asyncio.gather(*fetching)
        return answers

    assert asyncio.run(scenario()) == ["vqa:q"] * 3


def test_the_backlog_is_weighed_in_the_models_work_not_in_requests() -> None:
    """A 128-token request ahead makes a later one wait as 64 two-token ones do."""
    clock = FakeClock()
    long_ahead, short_ahead = (Admission(budget_s=1.0, clock=clock) for _ in range(2))
    for admission in (long_ahead, short_ahead):
        with admission.admitted(work=2.0):
            clock.now += 0.01  # 200 tokens a second
    with long_ahead.admitted(work=128.0), short_ahead.admitted(work=2.0):
        assert long_ahead.expected_wait_s() == pytest.approx(128 / 200, rel=0.05)
        assert short_ahead.expected_wait_s() == pytest.approx(2 / 200, rel=0.05)
        with long_ahead.set_aside():  # a URL fetch takes its whole work out of the backlog
            assert long_ahead.expected_wait_s() == 0.0
        assert long_ahead.expected_wait_s() == pytest.approx(128 / 200, rel=0.05)
