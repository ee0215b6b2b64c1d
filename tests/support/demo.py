"""The shipped demo model's card figure, and the accuracy bar tests hold the model to."""

from __future__ import annotations

import re

from serve_app.model.builtin import DEMO_SHAPES, SHIPPED

DEMO_DIR = SHIPPED[DEMO_SHAPES]


def card_accuracy() -> float:
    """The overall held-out accuracy recorded in the model card, as a fraction."""
    card = (DEMO_DIR / "README.md").read_text()
    match = re.search(r"\| \*\*all\*\* \|\s*\| \d+ \| \*\*([\d.]+)%\*\* \|", card)
    assert match is not None, "the model card has no overall accuracy"
    return float(match[1]) / 100


def accuracy_bar() -> float:
    """What a fresh sample must reach: five points under the card's figure, never below 88%."""
    return max(0.88, card_accuracy() - 0.05)
