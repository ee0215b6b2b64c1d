"""Settings shared by the scenarios: where results go, which model, and full or quick runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import Load

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Settings:
    """``quick`` shrinks every run to a few requests and seconds (for the smoke test)."""

    results_dir: Path = RESULTS_DIR
    model_id: str = "builtin:tiny-random-blip2-opt"
    quick: bool = False

    @property
    def rounds(self) -> int:
        """How often each setting is measured, interleaved with the others (drift evens out)."""
        return 1 if self.quick else 2

    def load(
        self,
        concurrency: int | None = None,
        rate: float | None = None,
        requests: int = 600,
        seconds: float = 15.0,
        warmup: int = 32,
    ) -> Load:
        """A load bounded by ``requests`` and ``seconds``, after ``warmup`` requests."""
        if self.quick:
            requests, seconds, warmup = min(requests, 12), min(seconds, 5.0), min(warmup, 4)
        return Load(
            concurrency=concurrency,
            rate=rate,
            max_requests=requests,
            time_limit_s=seconds,
            warmup_requests=warmup,
        )
