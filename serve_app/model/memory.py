"""GPU memory a BLIP-2 replica needs, computed from its architecture (no weights, no GPU).

The model is built on the meta device from its config, so its parameters are counted exactly.
Weights take their dtype's bytes, except the modules transformers keeps in float32 (when
loading in float16: the Q-Former and query tokens, and T5's feed-forward output layers) and,
when quantized, the language model's other linear layers (int8: one byte and a float32 scale
per row; nf4: half a byte and a double-quantized scale per 64 weights). A request
holds its sequences' KV cache at the token limits and the largest activations of any stage.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from serve_app.config import CheckpointConfig, ModelConfig, Quantization, RetrievalModelConfig
from serve_app.model.checkpoints import transformers

GIB = 1024**3
MIB = 1024**2
CONTEXT_BYTES = GIB
"""The CUDA context, cuBLAS workspaces and allocator slack: on the card, outside the tensors."""
HEADROOM = 0.1
"""Share of the card's memory the plan leaves unused."""
MAX_PLANNED_BATCH = 512
PLANNED_PROMPT_TOKENS = 64
"""Prompt tokens a generation request is planned with: a VQA prompt or a short chat."""
GPUS: dict[str, int] = {
    "T4 16 GB": 15360 * MIB,
    "A10G / L4 24 GB": 23028 * MIB,
    "A100 40 GB": 40960 * MIB,
    "L40S 48 GB": 46068 * MIB,
    "A100 / H100 80 GB": 81559 * MIB,
    "H200 141 GB": 143771 * MIB,
}
"""Common cards and the memory CUDA reports for each."""
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit weights, uint8 absmax per 64, fp32 per 256
_BYTES = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}
_SKIPPED_BY_QUANTIZATION = "lm_head"


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters of one BLIP-2 model, by part and by the precision transformers loads them in."""

    vision: int
    qformer: int
    """The Q-Former and its query tokens."""
    other: int
    """The projections between the parts (and retrieval's text embeddings and heads)."""
    language: int
    float32_at_float16: int
    """Kept in float32 when loading in float16 (the Q-Former; T5's feed-forward outputs)."""
    float32_always: int
    """Kept in float32 in float16 and bfloat16 alike."""
    quantizable: int
    """Weights of the language model's linear layers that quantization shrinks."""
    quantizable_rows: int
    """Output rows of those layers (int8 keeps one float32 scale per row)."""

    @property
    def total(self) -> int:
        """All parameters."""
        return self.vision + self.qformer + self.other + self.language


def count_parameters(config: Any, retrieval: bool = False) -> ParameterCounts:
    """Count the parameters of the model ``config`` describes, built on the meta device.

    ``retrieval`` builds ``Blip2ForImageTextRetrieval``, else ``Blip2ForConditionalGeneration``.
    The modules kept in float32 are the model's own ``_keep_in_fp32_modules`` lists.
    """
    hf = transformers()
    model_class = hf.Blip2ForImageTextRetrieval if retrieval else hf.Blip2ForConditionalGeneration
    with torch.device("meta"):
        model = model_class(config)
    at_float16 = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    always = set(getattr(model, "_keep_in_fp32_modules_strict", None) or ())
    counts = dict.fromkeys(
        ("vision", "qformer", "other", "language", "float32_at_float16", "float32_always"), 0
    )
    for name, param in model.named_parameters():
        part = name.split(".")[0]
        key = {"vision_model": "vision", "qformer": "qformer", "query_tokens": "qformer"}.get(
            part, "language" if part == "language_model" else "other"
        )
        counts[key] += param.numel()
        components = set(name.split("."))
        if components & always:
            counts["float32_always"] += param.numel()
        elif components & at_float16:
            counts["float32_at_float16"] += param.numel()
    quantizable = rows = 0
    for name, module in model.named_modules():
        components = set(name.split("."))
        if (
            name.startswith("language_model.")
            and isinstance(module, torch.nn.Linear)
            and _SKIPPED_BY_QUANTIZATION not in components
            and not components & (at_float16 | always)
        ):
            quantizable += module.weight.numel()
            rows += module.out_features
    return ParameterCounts(**counts, quantizable=quantizable, quantizable_rows=rows)


@dataclass(frozen=True)
class Workload:
    """What one request may ask for: the limits the plan sizes a request by."""

    prompt_tokens: int
    max_new_tokens: int
    num_beams: int


@dataclass(frozen=True)
class MemoryPlan:
    """Weights and per-request memory of one model at one dtype, quantization and workload."""

    model_id: str
    dtype: torch.dtype
    quantization: Quantization
    counts: ParameterCounts
    workload: Workload
    weights_bytes: int
    kv_cache_bytes_per_sequence: int
    activation_bytes_per_sequence: int
    image_bytes: int
    """Activations of the image encoder and Q-Former for one image."""
    feature_cache_bytes: int = 0
    """The generation replica's cache of image features (``model.feature_cache_mib``)."""
    batch_setting: str = "max_rows"
    """What sets the batch: the decoding loop's ``max_rows``, or retrieval's
    ``max_batch_size``."""

    def request_bytes(self, num_beams: int | None = None) -> int:
        """Memory one request holds at ``num_beams`` (the workload's if unset) sequences."""
        beams = self.workload.num_beams if num_beams is None else num_beams
        per_sequence = self.kv_cache_bytes_per_sequence + self.activation_bytes_per_sequence
        return self.image_bytes + beams * per_sequence

    def usable_bytes(self, gpu_bytes: int) -> int:
        """What a card of ``gpu_bytes`` leaves for weights and requests."""
        return int(gpu_bytes * (1 - HEADROOM)) - CONTEXT_BYTES

    def largest_batch(self, gpu_bytes: int, num_beams: int | None = None) -> int:
        """The largest batch (``batch_setting``) that fits on ``gpu_bytes`` (0: not even the
        weights)."""
        free = self.usable_bytes(gpu_bytes) - self.weights_bytes - self.feature_cache_bytes
        if free <= 0:
            return 0
        return min(MAX_PLANNED_BATCH, free // self.request_bytes(num_beams))

    def needed_bytes(self, batch: int) -> int:
        """Card memory a batch of ``batch`` worst-case requests needs, headroom included."""
        fixed = CONTEXT_BYTES + self.weights_bytes + self.feature_cache_bytes
        used = fixed + batch * self.request_bytes()
        return math.ceil(used / (1 - HEADROOM))

    def report(self, gpus: Mapping[str, int], batch: int | None = None) -> str:
        """The plan as text: where the memory goes, and the largest batch on each of ``gpus``
        (name to bytes); with ``batch``, whether a batch that size fits each."""
        counts, work = self.counts, self.workload
        dtype = str(self.dtype).removeprefix("torch.")
        lines = [
            f"{self.model_id}: {dtype}, quantization {self.quantization}",
            f"  parameters   {_count(counts.total)} (image encoder {_count(counts.vision)},"
            f" Q-Former {_count(counts.qformer)}, language model {_count(counts.language)},"
            f" other {_count(counts.other)})",
            f"  weights      {self.weights_bytes / GIB:.2f} GiB",
        ]
        if self.kv_cache_bytes_per_sequence:
            lines.append(
                f"  per request  {self.request_bytes() / MIB:.0f} MiB at {work.num_beams} beam(s),"
                f" {self.request_bytes(1) / MIB:.0f} MiB greedy, for {work.prompt_tokens} prompt"
                f" and {work.max_new_tokens} new tokens (a sequence: KV cache"
                f" {self.kv_cache_bytes_per_sequence / MIB:.1f} MiB, activations"
                f" {self.activation_bytes_per_sequence / MIB:.1f} MiB; the image"
                f" {self.image_bytes / MIB:.1f} MiB)"
            )
        else:
            lines.append(f"  per request  {self.request_bytes() / MIB:.1f} MiB (one image)")
        if self.feature_cache_bytes:
            lines.append(
                f"  image cache  {self.feature_cache_bytes / MIB:.0f} MiB of image features"
            )
        lines.append(
            f"  fixed        {CONTEXT_BYTES / GIB:.1f} GiB (CUDA context, workspaces), and"
            f" {HEADROOM:.0%} of the card left free"
        )
        lines.append(f"  largest {self.batch_setting} that fits:")
        for name, size in gpus.items():
            largest = self.largest_batch(size)
            line = f"    {name:<22} {size / GIB:6.1f} GiB  {largest:>4}"
            if work.num_beams > 1:
                line += f"  ({self.largest_batch(size, 1)} greedy)"
            if largest == 0 and self.largest_batch(size, 1) == 0:
                line += "  the weights do not fit"
            elif batch is not None:
                verdict = "fits" if batch <= largest else "does NOT fit"
                line += f"  {self.batch_setting} {batch} {verdict}"
            lines.append(line)
        return "\n".join(lines)


def share_of_gpu(card_bytes: int, gpus: float | None) -> int:
    """The memory of a replica given ``gpus`` of a card (a fraction shares it; none, or one
    or more, plan on one whole card: a model runs on one)."""
    return int(card_bytes * min(1.0, gpus or 1.0))


def _count(parameters: int) -> str:
    if parameters >= 10**9:
        return f"{parameters / 1e9:.3f} B"
    return f"{parameters / 1e6:.1f} M"


def plan_for(settings: CheckpointConfig) -> MemoryPlan:
    """The plan of a configured model on a GPU (``dtype`` auto: float16), at its limits.

    A generation model is planned at ``PLANNED_PROMPT_TOKENS``, ``max_new_tokens_limit`` and
    ``max_num_beams`` per row, with its feature cache; a retrieval model at one image per
    request.
    """
    from serve_app.model.architectures import architecture_config

    dtype = torch.float16 if settings.dtype == "auto" else getattr(torch, settings.dtype)
    config = architecture_config(settings.model_id, settings.revision)
    if isinstance(settings, ModelConfig):
        workload = Workload(
            PLANNED_PROMPT_TOKENS, settings.max_new_tokens_limit, settings.max_num_beams
        )
        plan = plan_memory(settings.model_id, config, dtype, settings.quantization, workload)
        return dataclasses.replace(plan, feature_cache_bytes=int(settings.feature_cache_mib * MIB))
    if not isinstance(settings, RetrievalModelConfig):
        raise TypeError(f"no memory plan for {type(settings).__name__}")
    workload = Workload(settings.max_text_tokens, 0, 1)
    return plan_memory(settings.model_id, config, dtype, "none", workload, retrieval=True)


def plan_memory(
    model_id: str,
    config: Any,
    dtype: torch.dtype,
    quantization: Quantization,
    workload: Workload,
    retrieval: bool = False,
) -> MemoryPlan:
    """The memory plan of the model ``config`` describes (see the module's docstring).

    A retrieval model's requests hold one image's activations (its texts are small).
    """
    counts = count_parameters(config, retrieval)
    size = _BYTES[dtype]
    float32 = counts.float32_always
    if dtype == torch.float16:
        float32 += counts.float32_at_float16
    weights = counts.total * size + float32 * (4 - size)
    if quantization == "int8":
        weights += counts.quantizable * (1 - size) + counts.quantizable_rows * 4
    elif quantization == "nf4":
        weights += round(counts.quantizable * (_NF4_BYTES - size))
    if retrieval:
        kv = activations = 0
    else:
        kv, activations = _language_bytes(
            config.text_config, config.num_query_tokens, workload, size
        )
    return MemoryPlan(
        model_id=model_id,
        dtype=dtype,
        quantization=quantization,
        counts=counts,
        workload=workload,
        weights_bytes=weights,
        kv_cache_bytes_per_sequence=kv,
        activation_bytes_per_sequence=activations,
        image_bytes=_image_bytes(config, size),
        batch_setting="max_batch_size" if retrieval else "max_rows",
    )


def _layer_activations(tokens: int, width: int, ffn: int, heads: int, size: int) -> int:
    """A transformer layer's live tensors: residual, norm, q/k/v, output, scores and MLP."""
    return size * (tokens * (6 * width + 2 * ffn) + 2 * heads * tokens * tokens)


def _image_bytes(config: Any, size: int) -> int:
    vision = config.vision_config
    patches: int = (vision.image_size // vision.patch_size) ** 2 + 1
    pixels: int = 3 * vision.image_size**2 * 4
    encoder = _layer_activations(
        patches,
        vision.hidden_size,
        vision.intermediate_size,
        vision.num_attention_heads,
        size,
    )
    width: int = vision.hidden_size
    return pixels + encoder + patches * width * size


def _language_bytes(text: Any, query_tokens: int, workload: Workload, size: int) -> tuple[int, int]:
    """KV cache and activations of one sequence, in bytes."""
    prompt = query_tokens + workload.prompt_tokens
    logits = 3 * text.vocab_size * 4  # the last position's logits, processed, probabilities
    if text.is_encoder_decoder:
        width = text.num_heads * text.d_kv
        decoder_kv = 2 * text.num_decoder_layers * width * workload.max_new_tokens * size
        cross_kv = 2 * text.num_decoder_layers * width * prompt * size
        encoder_out = prompt * text.d_model * size
        encoder = _layer_activations(prompt, text.d_model, 2 * text.d_ff, text.num_heads, size)
        return decoder_kv + cross_kv + encoder_out, encoder + logits
    tokens = prompt + workload.max_new_tokens
    kv = 2 * text.num_hidden_layers * text.hidden_size * tokens * size
    prefill = _layer_activations(
        prompt, text.hidden_size, text.ffn_dim, text.num_attention_heads, size
    )
    return kv, prefill + logits
