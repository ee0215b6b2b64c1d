"""The shipped demo models' card figures, and the bars tests hold the models to."""

from __future__ import annotations

import re
from dataclasses import dataclass

from serve_app.config import DEMO_SHAPES, DEMO_SHAPES_ITM
from serve_app.model.builtin import SHIPPED

DEMO_DIR = SHIPPED[DEMO_SHAPES]


def card_accuracy() -> float:
    """The overall held-out accuracy recorded in the model card, as a fraction."""
    card = (DEMO_DIR / "README.md").read_text()
    match = re.search(r"\| \*\*all\*\* \|\s*\| \d+ \| \*\*([\d.]+)%\*\* \|", card)
    assert match is not None, "the model card has no overall accuracy"
    return float(match[1]) / 100


def card_family_accuracy(family: str) -> float:
    """One family's held-out accuracy recorded in the model card, as a fraction."""
    card = (DEMO_DIR / "README.md").read_text()
    match = re.search(rf"\| {family} \|[^\n]*\| \d+ \| ([\d.]+)% \|", card)
    assert match is not None, f"the model card has no {family} accuracy"
    return float(match[1]) / 100


def accuracy_bar() -> float:
    """What a fresh sample must reach: five points under the card's figure, never below 88%."""
    return max(0.88, card_accuracy() - 0.05)


@dataclass(frozen=True)
class RetrievalBars:
    """What fresh scenes must reach with the demo retrieval model."""

    recall: float
    pooled_recall: float
    matching: float


def retrieval_bars() -> RetrievalBars:
    """Recall@1 (both ways; contrastive, and with the pooled image vector) and matching
    accuracy: five points under the card's figures, the first and last never below 90%."""
    card = (SHIPPED[DEMO_SHAPES_ITM] / "README.md").read_text()
    contrastive = re.search(r"\| contrastive \(BLIP-2's[^|]*\| ([\d.]+)% \| ([\d.]+)% \|", card)
    pooled = re.search(r"\| pooled image vector[^|]*\| ([\d.]+)% \| ([\d.]+)% \|", card)
    matching = re.search(r"\| [\d,]+ pairs \| \*\*([\d.]+)%\*\* \|", card)
    assert contrastive and pooled and matching, "the card has no retrieval figures"
    recall = min(float(contrastive[1]), float(contrastive[2])) / 100
    pooled_recall = min(float(pooled[1]), float(pooled[2])) / 100
    return RetrievalBars(
        recall=max(0.9, recall - 0.05),
        pooled_recall=pooled_recall - 0.05,
        matching=max(0.9, float(matching[1]) / 100 - 0.05),
    )
