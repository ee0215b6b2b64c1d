"""The ``builtin:`` model names and the checkpoint directory each stands for.

``resolve_builtin`` maps ``builtin:shapes-blip2`` to the trained demo checkpoint shipped inside
the package (see :mod:`serve_app.demo`) and the untrained tiny models to a directory that
:func:`~serve_app.model.tiny.build_tiny_blip2` fills once, in a cache. Every one loads through
the same ``from_pretrained`` code path as a Hub checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from serve_app.config import (
    DEMO_SHAPES,
    DEMO_SHAPES_ITM,
    TINY_RANDOM_ITM,
    TINY_RANDOM_OPT,
    TINY_RANDOM_T5,
)
from serve_app.model.tiny import build_tiny_blip2, build_tiny_blip2_itm

BUILTIN_PREFIX = "builtin:"
BUILDERS: dict[str, Callable[[Path], Path]] = {
    TINY_RANDOM_OPT: partial(build_tiny_blip2, "opt"),
    TINY_RANDOM_T5: partial(build_tiny_blip2, "t5"),
    TINY_RANDOM_ITM: build_tiny_blip2_itm,
}
"""Builtin names of untrained models, and what builds each into a directory."""
_DEMO = Path(__file__).parents[1] / "demo"
SHIPPED: dict[str, Path] = {
    DEMO_SHAPES: _DEMO / "shapes-blip2",
    DEMO_SHAPES_ITM: _DEMO / "shapes-blip2-itm",
}
"""Builtin names of checkpoints that ship as package data, and their directories."""
RECIPE_VERSION = 1
"""Bump whenever the build recipe changes, so stale cached builds are not reused."""


def default_cache_dir() -> Path:
    """``$SERVE_APP_CACHE`` if set, else ``~/.cache/serve_app``."""
    env = os.environ.get("SERVE_APP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "serve_app"


def resolve_builtin(model_id: str, cache_dir: Path | None = None) -> Path | None:
    """Return the directory of a builtin model, building an untrained one on first use.

    The build is written to a temporary directory and renamed into place, so concurrent
    replicas never see a partial checkpoint.

    Args:
        model_id: A model id; only ``builtin:`` names are handled.
        cache_dir: Root of the cache; :func:`default_cache_dir` if ``None``.

    Returns:
        The checkpoint directory, or ``None`` if ``model_id`` is not a ``builtin:`` name.

    Raises:
        ValueError: ``model_id`` is a ``builtin:`` name that does not exist.
    """
    if not model_id.startswith(BUILTIN_PREFIX):
        return None
    if model_id in SHIPPED:
        return SHIPPED[model_id]
    builder = BUILDERS.get(model_id)
    if builder is None:
        known = ", ".join(sorted([*BUILDERS, *SHIPPED]))
        raise ValueError(f"unknown builtin model {model_id!r}; known builtin models: {known}")
    root = (cache_dir if cache_dir is not None else default_cache_dir()) / "builtin"
    name = model_id[len(BUILTIN_PREFIX) :]
    target = root / f"{name}-v{RECIPE_VERSION}"
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        builder(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise  # not a concurrent build that won the race
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
