"""Train the demo retrieval model from scratch on the shapes task, evaluate it, write its card.

    python -m serve_app.demo.training.train_retrieval --output serve_app/demo/shapes-blip2-itm

BLIP-2's first-stage objectives on scene captions: image-text contrastive learning (each image
against every caption in the batch and one hard negative caption per scene, the same objects
with one colour or count changed) and image-text matching on positives, the hardest in-batch
negatives and those hard negatives; plus the same contrastive loss on the pooled image vector
(the mean query vector), so that one vector per image also retrieves. Weights, data order and
the held-out scenes come from fixed seeds.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional
from tqdm import tqdm

from serve_app.config import RetrievalModelConfig
from serve_app.demo import task
from serve_app.demo.training import build_retrieval
from serve_app.demo.training.evaluate_retrieval import evaluate_retrieval
from serve_app.demo.training.retrieval_card import write_retrieval_card
from serve_app.demo.training.train import schedule
from serve_app.model import retrieval_forward as heads
from serve_app.model.retrieval import Blip2Retrieval


@dataclass(frozen=True)
class Settings:
    """Optimisation and data settings of a training run."""

    steps: int = 4000
    scenes_per_batch: int = 64
    learning_rate: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 0.07
    model_seed: int = 0
    train_seed: int = 0
    heldout_seed: int = 1
    gallery_size: int = 100
    galleries: int = 10


@dataclass(frozen=True)
class Batch:
    """Scenes as model inputs: pixels, captions, one hard negative caption per scene."""

    pixel_values: torch.Tensor
    captions: list[str]
    negatives: list[str]


def make_batch(scenes: Sequence[task.Scene], processor: Any, rng: random.Random) -> Batch:
    """Render and preprocess ``scenes`` and describe each, truly and falsely."""
    images = [scene.render() for scene in scenes]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return Batch(
        pixels,
        [task.caption(scene) for scene in scenes],
        [task.altered_caption(scene, rng) for scene in scenes],
    )


def losses(
    model: Any, tokenizer: Any, batch: Batch, log_scale: torch.Tensor, rng: torch.Generator
) -> dict[str, torch.Tensor]:
    """The batch's contrastive loss (BLIP-2's score), pooled contrastive loss (the pooled image
    vector's score) and matching loss.

    Captions equal to an image's own count as its positives (one-object scenes repeat).
    """
    size = len(batch.captions)
    texts = batch.captions + batch.negatives
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    encoded = heads.encode_images(model, batch.pixel_values)
    queries = heads.image_query_embeddings(model, encoded)
    vectors = heads.text_embeddings(model, ids, mask)
    sim = heads.similarity(queries, vectors)  # (images, captions + negatives)
    pooled = functional.normalize(queries.mean(dim=1), dim=-1) @ vectors.t()
    same = torch.tensor([[c == t for t in texts] for c in batch.captions], dtype=torch.float32)
    scale = log_scale.exp()

    with torch.no_grad():
        captions_same = same[:, :size]
        weights = (sim[:, :size] * scale).softmax(1) * (1 - captions_same)
        negative_text = torch.multinomial(weights + 1e-9 * (1 - captions_same), 1, generator=rng)
        weights_t = (sim[:, :size].t() * scale).softmax(1) * (1 - captions_same)
        negative_image = torch.multinomial(weights_t + 1e-9 * (1 - captions_same), 1, generator=rng)
    rows = torch.arange(size)
    pair_images = torch.cat([rows, rows, rows, negative_image.squeeze(1)])
    pair_texts = torch.cat([rows, negative_text.squeeze(1), rows + size, rows])
    labels = torch.cat([torch.ones(size), torch.zeros(3 * size)]).long()
    matching = heads.matching_logits(model, encoded[pair_images], ids[pair_texts], mask[pair_texts])
    weight = torch.tensor([1.0, 3.0])  # one positive for three negatives
    return {
        "contrastive": _contrastive(sim * scale, same, size),
        "pooled": _contrastive(pooled * scale, same, size),
        "matching": functional.cross_entropy(matching, labels, weight=weight),
    }


def _contrastive(logits: torch.Tensor, same: torch.Tensor, size: int) -> torch.Tensor:
    """Image-to-text (over captions and hard negatives) and text-to-image (over images) cross
    entropy, every equal caption a positive."""
    image_to_text = -(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    targets = same[:, :size].t()
    text_to_image = (
        -(targets / targets.sum(1, keepdim=True) * logits[:, :size].t().log_softmax(1))
        .sum(1)
        .mean()
    )
    return (image_to_text + text_to_image) / 2


def train(model: Any, processor: Any, settings: Settings) -> dict[str, float]:
    """Train ``model`` in place with AdamW; returns the mean losses of the last 100 steps."""
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / settings.temperature)))
    parameters = [*model.parameters(), log_scale]
    optimizer = torch.optim.AdamW(
        parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(settings.steps, settings.warmup_steps)
    )
    scenes_rng = random.Random(settings.train_seed)
    sampling = torch.Generator().manual_seed(settings.train_seed)
    model.train()
    recent: list[dict[str, float]] = []
    progress = tqdm(range(settings.steps), unit="step")
    for _ in progress:
        scenes = [task.random_scene(scenes_rng) for _ in range(settings.scenes_per_batch)]
        batch = make_batch(scenes, processor, scenes_rng)
        parts = losses(model, processor.tokenizer, batch, log_scale, sampling)
        torch.autograd.backward(torch.stack(list(parts.values())).sum())
        torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            log_scale.clamp_(0.0, math.log(100.0))
        recent = [*recent[-99:], {name: float(value.detach()) for name, value in parts.items()}]
        progress.set_postfix({k: f"{v:.3f}" for k, v in _mean(recent).items()}, refresh=False)
    model.eval()
    return _mean(recent)


def _mean(recent: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(r[name] for r in recent) / len(recent) for name in recent[0]}


def run(output: Path, arch: build_retrieval.RetrievalArchitecture, settings: Settings) -> None:
    """Build, train and save the model into ``output``, evaluate it and write its card."""
    torch.manual_seed(settings.model_seed)
    processor = build_retrieval.build_processor(arch)
    model = build_retrieval.build_model(arch, processor.tokenizer)
    started = time.monotonic()
    final_losses = train(model, processor, settings)
    train_seconds = time.monotonic() - started
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    loaded = Blip2Retrieval.load(
        RetrievalModelConfig(model_id=str(output), device="cpu", dtype="float32")
    )
    figures = evaluate_retrieval(
        loaded, settings.heldout_seed, settings.galleries, settings.gallery_size, progress=True
    )
    params = sum(p.numel() for p in model.parameters())
    write_retrieval_card(
        output, arch, asdict(settings), params, train_seconds, final_losses, figures
    )
    print(f"{figures.summary()}; card in {output / 'README.md'}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, help="training steps (default: the shipped run's)")
    args = parser.parse_args(argv)
    settings = Settings() if args.steps is None else replace(Settings(), steps=args.steps)
    run(args.output, build_retrieval.RetrievalArchitecture(), settings)


if __name__ == "__main__":
    main()
