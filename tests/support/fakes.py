"""Fakes for what a test does not exercise (named as fakes)."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
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


class FaultyFakeModel(SlowFakeModel):
    """A fast stand-in model that misbehaves on command, for fault-tolerance tests.

    - ``crash-once:<path>``: the first replica to see it creates ``path`` and dies at once
      (the process exits mid-request); later ones answer normally.
    - ``crash-always``: every replica that sees it dies.
    - ``break-batch``: the whole batch raises, as a broken accelerator would.
    """

    batch_seconds = 0.05

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | Exception]:
        for request in requests:
            if request.text == "crash-always":
                os._exit(1)
            if request.text.startswith("crash-once:"):
                marker = Path(request.text.removeprefix("crash-once:"))
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
            if request.text == "break-batch":
                raise RuntimeError("the accelerator fell over at 0xdeadbeef in /opt/secret")
        return super().generate(requests)


def faulty_fake_model(config: ModelConfig) -> FaultyFakeModel:
    """Model factory for ``build_application``."""
    return FaultyFakeModel(config)
