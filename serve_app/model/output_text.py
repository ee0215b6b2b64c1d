"""Turning generated token ids into the text a caller gets (no Ray)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve_app.model.types import Family, Task


class OutputText:
    """Decodes a request's generated tokens: special tokens dropped, cut at a stop string,
    stripped, and for a caption the caller's prefix included."""

    def __init__(self, tokenizer: Any, family: Family, special_ids: set[int]) -> None:
        self._tokenizer = tokenizer
        self._family = family
        self._special_ids = special_ids

    def content_tokens(self, generated: Sequence[int]) -> list[int]:
        """The generated ids without padding, end of sequence or other special tokens."""
        return [t for t in generated if t not in self._special_ids]

    def decode(self, tokens: Sequence[int]) -> str:
        """Plain decoding of ``tokens``."""
        return str(self._tokenizer.decode(list(tokens), skip_special_tokens=True))

    def render(
        self,
        task: Task,
        prompt: str,
        prompt_ids: Sequence[int],
        generated: Sequence[int],
        stop: Sequence[str],
    ) -> tuple[str, bool]:
        """The text ``generated`` stands for, and whether it reached a stop string."""
        tokens = self.content_tokens(generated)
        text, stop_hit = truncate_at_stop(self.decode(tokens), stop)
        text = text.strip()
        if task == "caption" and prompt:
            if self._family == "opt" and not stop_hit:
                return self._continue_prefix(prompt, prompt_ids, tokens, text), stop_hit
            return join_prefix(prompt.strip(), text), stop_hit
        return text, stop_hit

    def _continue_prefix(
        self, prompt: str, prompt_ids: Sequence[int], tokens: list[int], continuation: str
    ) -> str:
        """A decoder-only model continues the prefix itself, so decode them together (keeping
        e.g. whether a word was continued)."""
        prefix_text = self.decode(prompt_ids)
        full = self.decode([*prompt_ids, *tokens])
        if full.startswith(prefix_text):
            return (prompt + full[len(prefix_text) :]).strip()
        return join_prefix(prompt.strip(), continuation)


def join_prefix(prefix: str, continuation: str) -> str:
    """Join a caption prefix and its continuation with one space (none before punctuation)."""
    if not prefix or not continuation:
        return prefix or continuation
    if continuation[0] in ".,;:!?'":
        return prefix + continuation
    return f"{prefix} {continuation}"


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the first stop string; report whether one was found."""
    cuts = [position for s in stop if (position := text.find(s)) >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)
