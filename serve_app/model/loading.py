"""Loading a checkpoint the way every model of the service does (no Ray).

A ``builtin:`` name is built (once, cached) by :func:`resolve_builtin`; anything else is a
Hugging Face id or a local directory handed to ``from_pretrained``. Pillow preprocessing on
every machine, torchvision installed or not: the same pixels everywhere, and the ingress can
resize exactly as the processor would.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from serve_app.config import CheckpointConfig
from serve_app.model.builtin import resolve_builtin
from serve_app.model.devices import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A processor and a model in eval mode on their device, and the name callers see."""

    name: str
    processor: Any
    model: Any
    device: torch.device
    dtype: torch.dtype


def load_checkpoint(
    settings: CheckpointConfig, model_class: str, processor_class: str = "AutoProcessor"
) -> LoadedCheckpoint:
    """Load ``settings.model_id`` as transformers' ``model_class`` with its processor.

    ``cpu_threads``, if set, caps torch's CPU threads in this process. A local directory is
    named by its folder only: callers never see server paths.

    Raises:
        ValueError: Unknown builtin name, or ``device='cuda'`` without CUDA.
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
    model = getattr(hf, model_class).from_pretrained(source, revision=revision, dtype=dtype)
    model.to(device)
    model.eval()
    logger.info("loaded %s on %s as %s", settings.model_id, device, dtype)
    local = builtin is None and Path(source).is_dir()
    name = Path(source).name if local else settings.model_id
    return LoadedCheckpoint(name, processor, model, device, dtype)
