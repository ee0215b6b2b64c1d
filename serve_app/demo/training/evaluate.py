"""Accuracy of a loaded model on the shapes task, through ``Blip2Model.generate``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from serve_app.contract.api import GenerationParams
from serve_app.demo.task import FAMILIES, Example, Family, judge
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import ModelRequest

MAX_NEW_TOKENS = 20
"""The CPU config's default: room for the longest caption (15 words) and its end token."""


@dataclass
class Accuracy:
    """Right answers out of questions asked, per family."""

    right: dict[Family, int] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))
    asked: dict[Family, int] = field(default_factory=lambda: dict.fromkeys(FAMILIES, 0))

    def add(self, family: Family, correct: bool) -> None:
        """Count one answer."""
        self.asked[family] += 1
        self.right[family] += int(correct)

    def family(self, family: Family) -> float:
        """The share of ``family``'s questions answered right (0 if none was asked)."""
        return self.right[family] / self.asked[family] if self.asked[family] else 0.0

    @property
    def overall(self) -> float:
        """The share of all questions answered right."""
        asked = sum(self.asked.values())
        return sum(self.right.values()) / asked if asked else 0.0


def request_for(example: Example, max_new_tokens: int = MAX_NEW_TOKENS) -> ModelRequest:
    """The service's request for ``example``: VQA for a question, a plain caption otherwise."""
    return ModelRequest(
        task="caption" if example.family == "caption" else "vqa",
        text=example.question,
        image=np.asarray(example.scene.render(), dtype=np.uint8),
        params=GenerationParams(max_new_tokens=max_new_tokens),
    )


def answers(
    model: Blip2Model, examples: Sequence[Example], batch_size: int = 50, progress: bool = False
) -> list[str]:
    """Greedy answers to ``examples``, in batches.

    Raises:
        Exception: The model failed on an example.
    """
    texts: list[str] = []
    starts = range(0, len(examples), batch_size)
    for start in tqdm(starts, desc="evaluating", unit="batch", disable=not progress):
        chunk = examples[start : start + batch_size]
        for result in model.generate([request_for(example) for example in chunk]):
            if isinstance(result, Exception):
                raise result
            texts.append(result.text)
    return texts


def evaluate(
    model: Blip2Model, examples: Sequence[Example], batch_size: int = 50, progress: bool = False
) -> Accuracy:
    """Judge the model's greedy answers to ``examples``."""
    accuracy = Accuracy()
    for example, text in zip(examples, answers(model, examples, batch_size, progress), strict=True):
        accuracy.add(example.family, judge(example, text))
    return accuracy
