"""Per-row sampling settings in one step: each row's processed scores are what transformers'
own processors and warpers give that row alone (no Ray)."""

from __future__ import annotations

import torch
from transformers import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from serve_app.contract.api import GenerationParams
from serve_app.engine.sampling import RowSampler, RowSettings, repetition_penalty, warp

VOCAB = 300
ROWS = [
    # (temperature, top_p, repetition penalty)
    (1.0, 1.0, 1.0),
    (0.7, 0.9, 1.0),
    (1.5, 0.5, 1.3),
    (0.3, 1.0, 0.8),
    (2.0, 0.05, 2.0),
]


def logits_and_histories() -> tuple[torch.Tensor, list[list[int]]]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(ROWS), VOCAB, generator=generator) * 3
    histories = [
        torch.randint(0, VOCAB, (n,), generator=generator).tolist() for n in (1, 7, 20, 3, 12)
    ]
    return logits, histories


def transformers_row(
    scores: torch.Tensor, history: list[int], temperature: float, top_p: float, penalty: float
) -> torch.Tensor:
    """One row through transformers' own processors, as ``generate`` builds them."""
    ids = torch.tensor([history])
    row = scores.unsqueeze(0)
    if penalty != 1.0:
        row = RepetitionPenaltyLogitsProcessor(penalty)(ids, row)
    if temperature != 1.0:
        row = TemperatureLogitsWarper(temperature)(ids, row)
    row = TopKLogitsWarper(top_k=50)(ids, row)
    if top_p < 1.0:
        row = TopPLogitsWarper(top_p)(ids, row)
    return row.squeeze(0)


def test_vectorised_penalty_and_warpers_equal_transformers_row_by_row() -> None:
    logits, histories = logits_and_histories()
    width = max(len(h) for h in histories)
    padded = torch.tensor([h + [h[0]] * (width - len(h)) for h in histories])
    temperatures, top_ps, penalties = (torch.tensor(column) for column in zip(*ROWS, strict=True))
    ours = warp(repetition_penalty(logits, padded, penalties), temperatures, 50, top_ps)
    for i, (temperature, top_p, penalty) in enumerate(ROWS):
        theirs = transformers_row(logits[i], histories[i], temperature, top_p, penalty)
        assert torch.equal(ours[i].isinf(), theirs.isinf()), i
        assert torch.allclose(ours[i], theirs, rtol=0, atol=1e-6), i


def test_the_row_sampler_keeps_greedy_rows_greedy_and_seeded_rows_their_own() -> None:
    logits, histories = logits_and_histories()
    sampler = RowSampler(top_k=None)
    greedy = RowSettings.of(GenerationParams(repetition_penalty=1.3), torch.device("cpu"))

    def seeded(seed: int) -> RowSettings:
        params = GenerationParams(do_sample=True, temperature=1.5, seed=seed)
        return RowSettings.of(params, torch.device("cpu"))

    unseeded = RowSettings.of(GenerationParams(do_sample=True), torch.device("cpu"))
    alone = [
        int(sampler.next_tokens(logits[i : i + 1], [s], histories[i : i + 1])[0])
        for i, s in ((2, seeded(5)), (4, seeded(9)))
    ]
    together = sampler.next_tokens(
        logits, [greedy, unseeded, seeded(5), unseeded, seeded(9)], histories
    ).tolist()
    assert [together[2], together[4]] == alone
    penalised = repetition_penalty(
        logits[:1], torch.tensor([histories[0]]), torch.tensor([1.3])
    ).argmax()
    assert together[0] == int(penalised)
    draws = {
        int(sampler.next_tokens(logits[1:2], [unseeded], histories[1:2])[0]) for _ in range(30)
    }
    assert len(draws) > 1  # an unseeded row samples
