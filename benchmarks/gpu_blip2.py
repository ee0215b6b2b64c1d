"""BLIP-2 at ``Salesforce/blip2-opt-2.7b``'s sizes on a GPU: images/s and latency per batch size.

The model is built from a config with the checkpoint's sizes and random float16 weights (no
download), so the figures measure compute, not answers: every batch generates exactly
``--max-new-tokens`` tokens. Needs CUDA (``--smoke`` runs tiny sizes on CPU to check the code):

    python -m benchmarks.gpu_blip2 --batch-sizes 1 2 4 8 16 32 --max-new-tokens 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
)

from benchmarks.report import machine, write_result
from benchmarks.settings import RESULTS_DIR

IMAGE_TOKEN = 50265
PROMPT_TOKENS = 8


def blip2_opt_2_7b(smoke: bool = False) -> Blip2Config:
    """The sizes of ``Salesforce/blip2-opt-2.7b`` (``smoke``: a few small layers instead)."""
    layers = (
        {"vision": 39, "qformer": 12, "text": 32}
        if not smoke
        else dict.fromkeys(("vision", "qformer", "text"), 1)
    )
    width = {"vision": 1408, "text": 2560} if not smoke else {"vision": 64, "text": 64}
    vision = Blip2VisionConfig(
        hidden_size=width["vision"],
        intermediate_size=6144 if not smoke else 128,
        num_hidden_layers=layers["vision"],
        num_attention_heads=16 if not smoke else 4,
        image_size=224,
        patch_size=14,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=768 if not smoke else 64,
        intermediate_size=3072 if not smoke else 128,
        num_hidden_layers=layers["qformer"],
        num_attention_heads=12 if not smoke else 4,
        encoder_hidden_size=width["vision"],
    )
    text = OPTConfig(
        hidden_size=width["text"],
        word_embed_proj_dim=width["text"],
        ffn_dim=10240 if not smoke else 128,
        num_hidden_layers=layers["text"],
        num_attention_heads=32 if not smoke else 4,
        vocab_size=50304,
        max_position_embeddings=2048,
    )
    return Blip2Config(
        vision_config=vision.to_dict(),
        qformer_config=qformer.to_dict(),
        text_config=text.to_dict(),
        num_query_tokens=32,
        image_token_index=IMAGE_TOKEN,
    )


def measure(
    model: Any, batch_size: int, max_new_tokens: int, repeats: int, device: torch.device
) -> dict[str, Any]:
    """Latency of one batched ``generate`` (median of ``repeats``) and images per second."""
    dtype = next(model.parameters()).dtype
    pixels = torch.randn(batch_size, 3, 224, 224, device=device, dtype=dtype)
    prompt = torch.randint(3, IMAGE_TOKEN, (batch_size, PROMPT_TOKENS), device=device)
    images = torch.full((batch_size, model.config.num_query_tokens), IMAGE_TOKEN, device=device)
    input_ids = torch.cat([images, prompt], dim=1)
    kwargs = {"max_new_tokens": max_new_tokens, "min_new_tokens": max_new_tokens}
    times = []
    with torch.inference_mode():
        for attempt in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            model.generate(pixel_values=pixels, input_ids=input_ids, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if attempt:  # the first call warms up
                times.append(time.perf_counter() - started)
    latency = sorted(times)[len(times) // 2]
    return {
        "batch_size": batch_size,
        "latency_ms": round(latency * 1000, 1),
        "images_per_s": round(batch_size / latency, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --smoke to check the code on CPU)")
    device = torch.device("cpu" if args.smoke else "cuda")
    torch.set_default_dtype(torch.float32 if args.smoke else torch.float16)
    with device:
        model = Blip2ForConditionalGeneration(blip2_opt_2_7b(args.smoke))
    model.eval()  # type: ignore[no-untyped-call]
    torch.set_default_dtype(torch.float32)
    points = [
        measure(model, size, args.max_new_tokens, args.repeats, device) for size in args.batch_sizes
    ]
    result = {
        "scenario": "gpu",
        "model": "Blip2ForConditionalGeneration, blip2-opt-2.7b sizes, random weights",
        "dtype": str(next(model.parameters()).dtype),
        "max_new_tokens": args.max_new_tokens,
        "points": points,
        "machine": machine(),
    }
    write_result(args.results, "gpu-smoke" if args.smoke else "gpu", result)
    for point in points:
        print(point)


if __name__ == "__main__":
    main()
