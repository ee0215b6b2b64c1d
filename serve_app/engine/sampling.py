"""Each row's next token with its own settings, for all rows at once (no Ray).

transformers' logits processors take one setting per batch; here every setting is a tensor
with a value per row, applied in ``generate``'s order: repetition penalty, then (sampling rows
only) temperature, top-k and top-p. A greedy row takes the arg-max; a sampled row draws from
the shared generator, or from its own when it has a seed, so its draws are the same whatever
else runs beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from serve_app.contract.api import GenerationParams

DEFAULT_TOP_K = 50
"""transformers' top-k when a checkpoint's generation config sets none."""


@dataclass(frozen=True)
class RowSettings:
    """How one row picks its tokens."""

    params: GenerationParams
    generator: torch.Generator | None = None
    """A seeded sample's own random generator."""

    @classmethod
    def of(cls, params: GenerationParams, device: torch.device) -> RowSettings:
        """Settings for ``params``; a seeded sample gets a generator of its own on ``device``."""
        if params.do_sample and params.seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed)
            return cls(params, generator)
        return cls(params)


class RowSampler:
    """Picks the next token of every row from its logits."""

    def __init__(self, top_k: int | None) -> None:
        self._top_k = DEFAULT_TOP_K if top_k is None else top_k

    def next_tokens(
        self,
        logits: torch.Tensor,
        settings: Sequence[RowSettings],
        histories: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """``[rows]`` token ids from ``[rows, vocab]`` logits.

        ``histories`` are each row's token ids so far (what the repetition penalty sees).
        """
        scores = logits.float()
        device = scores.device
        penalties = [s.params.repetition_penalty for s in settings]
        if any(p != 1.0 for p in penalties):
            scores = repetition_penalty(
                scores, _padded(histories, device), torch.tensor(penalties, device=device)
            )
        sampled = [s.params.do_sample for s in settings]
        tokens = scores.argmax(dim=-1)
        if not any(sampled):
            return tokens
        rows = torch.tensor([i for i, s in enumerate(sampled) if s], device=device)
        chosen = [settings[i] for i, s in enumerate(sampled) if s]
        warped = warp(
            scores.index_select(0, rows),
            torch.tensor([s.params.temperature for s in chosen], device=device),
            self._top_k,
            torch.tensor([s.params.top_p for s in chosen], device=device),
        )
        probs = warped.softmax(dim=-1)
        draws = _draw(probs, [s.generator for s in chosen])
        return tokens.index_copy(0, rows, draws)


def repetition_penalty(
    scores: torch.Tensor, histories: torch.Tensor, penalties: torch.Tensor
) -> torch.Tensor:
    """transformers' repetition penalty with a penalty per row (1.0 leaves a row as it is).

    ``histories`` is ``[rows, length]``; a shorter history repeats one of its own ids as
    padding, which changes nothing.
    """
    seen = torch.gather(scores, 1, histories)
    penalty = penalties.unsqueeze(1)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, histories, seen)


def warp(
    scores: torch.Tensor, temperatures: torch.Tensor, top_k: int, top_ps: torch.Tensor
) -> torch.Tensor:
    """transformers' temperature, top-k and top-p warpers with a temperature and top-p per row
    (a top-p of 1.0 keeps every token, as the warper that is then not applied)."""
    scores = scores / temperatures.unsqueeze(1)
    if top_k:
        k = min(max(top_k, 1), scores.shape[-1])
        kth = torch.topk(scores, k).values[..., -1:]
        scores = scores.masked_fill(scores < kth, -float("inf"))
    sorted_scores, order = torch.sort(scores, descending=False)
    cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    threshold = torch.where(top_ps < 1.0, 1.0 - top_ps, -1.0).unsqueeze(1)
    remove_sorted = cumulative <= threshold
    remove_sorted[..., -1:] = False  # keep at least one token
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return scores.masked_fill(remove, -float("inf"))


def _draw(probs: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
    """One draw per row: rows with a generator of their own draw alone, the rest together."""
    draws = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    shared = [i for i, g in enumerate(generators) if g is None]
    if shared:
        index = torch.tensor(shared, device=probs.device)
        draws[index] = torch.multinomial(probs.index_select(0, index), 1).squeeze(1)
    for i, generator in enumerate(generators):
        if generator is not None:
            draws[i] = torch.multinomial(probs[i : i + 1], 1, generator=generator)[0, 0]
    return draws


def _padded(histories: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    width = max(len(h) for h in histories)
    return torch.tensor([[*h, *([h[0]] * (width - len(h)))] for h in histories], device=device)
