"""The bare model on a GPU, checkpoint by checkpoint and setting by setting, memory vs plan.

For ``Salesforce/blip2-opt-2.7b`` and ``Salesforce/blip2-flan-t5-xl`` (their sizes, random
weights, loaded through ``Blip2Model.load`` like any checkpoint): float16 with SDPA attention
(the default), with eager attention, with the static KV cache (compiled by transformers on
CUDA; each new batch shape compiles, so it is timed at one batch size after a compile run),
and the language model in int8 and nf4. For each: the latency of ``Blip2Model.generate`` on
batches of 1, 8 and 32 VQA requests (224x224 images, every request generating exactly
``MAX_NEW_TOKENS`` tokens), images/s, the weights' memory and the peak memory, each beside what
:mod:`serve_app.model.memory` plans. Needs CUDA; ``--quick`` runs tiny sizes on the CPU.
The result is written after every setting, so a run stopped early keeps what it measured;
settings not started within ``TIME_BUDGET_S`` are listed as skipped.
"""

from __future__ import annotations

import gc
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import gpu_model, plots
from benchmarks.report import machine, write_result
from benchmarks.settings import Settings
from serve_app.config import ModelConfig
from serve_app.model.architectures import FLAN_T5_XL, KNOWN, OPT_2_7B
from serve_app.model.blip2 import Blip2Model
from serve_app.model.memory import GIB, Workload, plan_memory

MODELS = (OPT_2_7B, FLAN_T5_XL)
VARIANTS: dict[str, dict[str, Any]] = {
    "float16": {},
    "int8": {"quantization": "int8"},
    "nf4": {"quantization": "nf4"},
    "float16, eager attention": {"attn_implementation": "eager"},
    "float16, static KV cache": {"static_kv_cache": True},
}
"""The settings measured, most wanted first (a run out of time skips the last)."""
BATCH_SIZES = (1, 8, 32)
STATIC_BATCH_SIZES = (8,)
MAX_NEW_TOKENS = 20
REPEATS = 3
TIME_BUDGET_S = 300.0
"""Settings not started within this many seconds are skipped (and listed as skipped)."""


def run(settings: Settings) -> dict[str, Any]:
    """Measure every model and setting; write ``gpu-variants.json`` and ``.png``."""
    smoke = settings.quick
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("the gpu-variants scenario needs CUDA (--quick checks it on a CPU)")
    started = time.monotonic()
    name = "gpu-variants-quick" if smoke else "gpu-variants"
    summary: dict[str, Any] = {
        "scenario": "gpu-variants",
        "headline": {},
        "max_new_tokens": MAX_NEW_TOKENS,
        "images": "224x224 arrays (the size the ingress sends)",
        "results": [],
        "skipped": [],
        "machine": machine(),
    }
    folder = Path(tempfile.mkdtemp(prefix="gpu-variants-"))
    try:
        checkpoints = {
            model_id: gpu_model.save_random_checkpoint(
                model_id, folder / model_id.split("/")[-1], MAX_NEW_TOKENS, smoke
            )
            for model_id in MODELS
        }
        for variant, options in VARIANTS.items():
            for model_id, checkpoint in checkpoints.items():
                if time.monotonic() - started > TIME_BUDGET_S:
                    summary["skipped"].append(f"{model_id}: {variant}")
                    continue
                row = measure_variant(model_id, checkpoint, variant, options, smoke)
                summary["results"].append(row)
                summary["headline"].update(headline(row))
                write_result(settings.results_dir, name, summary)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    write_result(settings.results_dir, name, summary)
    plots.gpu_variants(summary, settings.results_dir / f"{name}.png")
    return summary


def measure_variant(
    model_id: str, checkpoint: Path, variant: str, options: dict[str, Any], smoke: bool
) -> dict[str, Any]:
    """Load ``checkpoint`` with ``options`` and time it at every batch size."""
    cuda = torch.cuda.is_available()
    config = ModelConfig(
        model_id=model_id,
        device="cuda" if cuda else "cpu",
        dtype="float16" if cuda else "float32",
        default_max_new_tokens=MAX_NEW_TOKENS,
        max_new_tokens_limit=MAX_NEW_TOKENS,
        **options,
    )
    print(f"{model_id}: {variant}", flush=True)
    loading = time.perf_counter()
    model = Blip2Model.load(config.model_copy(update={"model_id": str(checkpoint)}))
    load_s = time.perf_counter() - loading
    weights = torch.cuda.memory_allocated() if cuda else 0
    sizes = STATIC_BATCH_SIZES if config.static_kv_cache else BATCH_SIZES
    batches = []
    for size in sizes[:1] if smoke else sizes:
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        first = time.perf_counter()
        measured = gpu_model.measure_bare(model, size, 1 if smoke else REPEATS)
        measured["first_and_timed_calls_s"] = round(time.perf_counter() - first, 1)
        if cuda:
            measured["peak_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
        batches.append(measured)
    plan = plan_memory(
        model_id,
        KNOWN[model_id](),
        torch.float16,
        config.quantization,
        Workload(
            prompt_tokens=measured["prompt_tokens"], max_new_tokens=MAX_NEW_TOKENS, num_beams=1
        ),
    )
    for measured in batches:
        planned = plan.weights_bytes + measured["batch_size"] * plan.request_bytes()
        measured["planned_peak_gib"] = round(planned / GIB, 2)
    del model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {
        "model": model_id,
        "variant": variant,
        "load_s": round(load_s, 1),
        "weights_gib": round(weights / GIB, 2),
        "planned_weights_gib": round(plan.weights_bytes / GIB, 2),
        "batches": batches,
    }


def headline(row: dict[str, Any]) -> dict[str, float]:
    """The largest batch's images/s of one model and setting."""
    largest = row["batches"][-1]
    key = f"{row['model'].split('/')[-1]} {row['variant']} images/s at {largest['batch_size']}"
    return {key: largest["images_per_s"]}
