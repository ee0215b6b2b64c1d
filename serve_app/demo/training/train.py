"""Train the demo model from scratch on the shapes task, evaluate it and write its model card.

    python -m serve_app.demo.training.train --output serve_app/demo/shapes-blip2

Weights, data order and the held-out set all come from fixed seeds, so a run on the same
software reproduces the shipped checkpoint. Training sequences are built exactly as
``Blip2Model`` builds them at inference (image query tokens, then the tokenized prompt,
left-padded), followed by the answer and the end-of-sequence token, the only positions with a
loss.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from serve_app.config import DEFAULT_VQA_TEMPLATE, ModelConfig
from serve_app.demo import task
from serve_app.demo.training import build
from serve_app.demo.training.card import write_card
from serve_app.demo.training.evaluate import evaluate
from serve_app.model.blip2 import Blip2Model

IGNORE = -100


@dataclass(frozen=True)
class Settings:
    """Optimisation and data settings of a training run."""

    steps: int = 10000
    scenes_per_batch: int = 32
    learning_rate: float = 5e-4
    warmup_steps: int = 300
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    model_seed: int = 0
    train_seed: int = 0
    heldout_seed: int = 1
    heldout_size: int = 1000


def prompt_for(example: task.Example) -> str:
    """What ``Blip2Model.build_prompt`` sends for ``example`` with the default VQA template."""
    if example.family == "caption":
        return ""
    return DEFAULT_VQA_TEMPLATE.format(question=example.question)


def encode(
    groups: Sequence[Sequence[task.Example]], processor: Any, model: Any
) -> dict[str, torch.Tensor]:
    """Model inputs and labels for a batch of scenes, each with its questions.

    Each row is query tokens, prompt, answer and end of sequence; ``repeats`` says how many
    rows each scene's image has, so the image is encoded once for all its questions.
    """
    tokenizer = processor.tokenizer
    queries = [model.config.image_token_index] * model.config.num_query_tokens
    rows: list[list[int]] = []
    targets: list[list[int]] = []
    for example in (example for group in groups for example in group):
        prompt = queries + list(tokenizer(prompt_for(example))["input_ids"])
        answer = list(tokenizer(example.answer, add_special_tokens=False)["input_ids"])
        answer.append(tokenizer.eos_token_id)
        rows.append(prompt + answer)
        targets.append([IGNORE] * len(prompt) + answer)
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, target) in enumerate(zip(rows, targets, strict=True)):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        labels[i, width - len(row) :] = torch.tensor(target)
        attention_mask[i, width - len(row) :] = 1
    images = [group[0].scene.render() for group in groups]
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    return {
        "pixel_values": pixels,
        "repeats": torch.tensor([len(group) for group in groups]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
    }


def loss_of(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The model's own loss on ``batch``, encoding each image once for all its rows."""
    features = model.get_image_features(batch["pixel_values"], return_dict=True)
    features.pooler_output = features.pooler_output.repeat_interleave(batch["repeats"], dim=0)
    output = model(
        pixel_values=None,
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        labels=batch["labels"],
        mm_encoder_outputs={"image": features},
    )
    loss: torch.Tensor = output.loss
    return loss


def batches(settings: Settings) -> Iterator[list[list[task.Example]]]:
    """The training batches, in a fixed order: scenes, each with one question per family."""
    rng = random.Random(settings.train_seed)
    while True:
        scenes = (task.random_scene(rng) for _ in range(settings.scenes_per_batch))
        yield [task.examples_for(scene, rng) for scene in scenes]


def schedule(steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The learning rate's factor at each step: linear warm-up, then cosine decay to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def train(model: Any, processor: Any, settings: Settings) -> float:
    """Train ``model`` in place with AdamW; returns the mean loss of the last 100 steps."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, schedule(settings.steps, settings.warmup_steps)
    )
    model.train()
    recent: list[float] = []
    progress = tqdm(islice(batches(settings), settings.steps), total=settings.steps, unit="step")
    for groups in progress:
        loss = loss_of(model, encode(groups, processor, model))
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        recent = [*recent[-99:], float(loss)]
        progress.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
    model.eval()
    return sum(recent) / max(1, len(recent))


def run(output: Path, arch: build.Architecture, settings: Settings) -> None:
    """Build, train and save the model into ``output``, evaluate it and write its card."""
    torch.manual_seed(settings.model_seed)
    processor = build.build_processor(arch)
    model = build.build_model(arch, processor.tokenizer)
    started = time.monotonic()
    final_loss = train(model, processor, settings)
    train_seconds = time.monotonic() - started
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    loaded = Blip2Model.load(ModelConfig(model_id=str(output), device="cpu", dtype="float32"))
    heldout = task.sample(settings.heldout_seed, settings.heldout_size)
    accuracy = evaluate(loaded, heldout, progress=True)
    params = sum(p.numel() for p in model.parameters())
    write_card(output, arch, asdict(settings), params, train_seconds, final_loss, accuracy)
    summary = ", ".join(f"{f} {accuracy.family(f):.1%}" for f in task.FAMILIES)
    print(f"held-out accuracy {accuracy.overall:.1%} ({summary}); card in {output / 'README.md'}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, required=True, help="checkpoint directory")
    parser.add_argument("--steps", type=int, help="training steps (default: the shipped run's)")
    args = parser.parse_args(argv)
    settings = Settings() if args.steps is None else replace(Settings(), steps=args.steps)
    run(args.output, build.Architecture(), settings)


if __name__ == "__main__":
    main()
