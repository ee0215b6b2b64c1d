"""Fakes for what a test does not exercise (named as fakes)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from serve_app.config import ModelConfig
from serve_app.schemas import GenerationRequest, GenerationResult


class SlowFakeModel:
    """A stand-in model whose every batch takes a fixed time: for autoscaling and overload tests.

    It echoes the request's text so callers can check they got their own answer.
    """

    batch_seconds = 0.3

    def __init__(self, config: ModelConfig) -> None:
        self._config = config

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        time.sleep(self.batch_seconds)
        return [
            GenerationResult(text=f"fake:{r.text}", prompt_tokens=1, completion_tokens=1)
            for r in requests
        ]

    def describe(self) -> dict[str, Any]:
        return {
            "source": "slow-fake",
            "family": "opt",
            "dtype": "float32",
            "device": "cpu",
            "num_query_tokens": 0,
        }


def slow_fake_model(config: ModelConfig) -> SlowFakeModel:
    """Model factory for ``build_application``."""
    return SlowFakeModel(config)
