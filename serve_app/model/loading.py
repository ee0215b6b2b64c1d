"""Loading a checkpoint the way every model of the service does (no Ray).

A ``builtin:`` name is built (once, cached) by :func:`resolve_builtin`; anything else is a
Hugging Face id or a local directory handed to ``from_pretrained``. Pillow preprocessing on
every machine, torchvision installed or not: the same pixels everywhere, and the ingress can
resize exactly as the processor would.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve_app.config import CheckpointConfig, Quantization
from serve_app.model.builtin import resolve_builtin
from serve_app.model.devices import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

KEPT_IN_DTYPE = ["vision_model", "qformer", "language_projection", "lm_head"]
"""Modules quantization leaves alone: the image side, and the output layer (rare tokens)."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A processor and a model in eval mode on their device, and the name callers see."""

    name: str
    processor: Any
    model: Any
    device: torch.device
    dtype: torch.dtype


def bitsandbytes_config(quantization: Quantization, dtype: torch.dtype) -> Any | None:
    """transformers' ``BitsAndBytesConfig`` for ``quantization`` (None for ``"none"``).

    Raises:
        ValueError: bitsandbytes (or accelerate, which loads it) is not installed.
    """
    if quantization == "none":
        return None
    for package in ("bitsandbytes", "accelerate"):
        if importlib.util.find_spec(package) is None:
            raise ValueError(
                f"quantization {quantization!r} needs {package}: "
                "pip install 'blip2-serve[quantization]'"
            )
    hf: Any = importlib.import_module("transformers")
    if quantization == "int8":
        return hf.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=KEPT_IN_DTYPE)
    return hf.BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        llm_int8_skip_modules=KEPT_IN_DTYPE,
    )


def load_checkpoint(
    settings: CheckpointConfig,
    model_class: str,
    processor_class: str = "AutoProcessor",
    quantization: Quantization = "none",
    **options: Any,
) -> LoadedCheckpoint:
    """Load ``settings.model_id`` as transformers' ``model_class`` with its processor.

    ``cpu_threads``, if set, caps torch's CPU threads in this process. A local directory is
    named by its folder only: callers never see server paths. A quantized model is placed on
    its device while it loads; ``options`` go to ``from_pretrained``.

    Raises:
        ValueError: Unknown builtin name, ``device='cuda'`` without CUDA, or quantization
            without bitsandbytes.
    """
    hf: Any = importlib.import_module("transformers")
    if settings.cpu_threads is not None:
        torch.set_num_threads(settings.cpu_threads)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    builtin = resolve_builtin(settings.model_id)
    source = str(builtin) if builtin is not None else settings.model_id
    revision = None if builtin is not None else settings.revision
    processor = getattr(hf, processor_class).from_pretrained(
        source, revision=revision, backend="pil"
    )
    quantization_config = bitsandbytes_config(quantization, dtype)
    if quantization_config is not None:
        options.update(quantization_config=quantization_config, device_map={"": device})
    model = getattr(hf, model_class).from_pretrained(
        source, revision=revision, dtype=dtype, **options
    )
    if quantization_config is None:
        model.to(device)
    model.eval()
    logger.info(
        "loaded %s on %s as %s (quantization: %s)", settings.model_id, device, dtype, quantization
    )
    local = builtin is None and Path(source).is_dir()
    name = Path(source).name if local else settings.model_id
    return LoadedCheckpoint(name, processor, model, device, dtype)
