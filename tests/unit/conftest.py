"""The tiny BLIP-2 models (generation and retrieval), built once per test session into one
fresh cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_app.config import (
    TINY_RANDOM_ITM,
    TINY_RANDOM_OPT,
    TINY_RANDOM_T5,
    ModelConfig,
    RetrievalModelConfig,
)
from serve_app.model.blip2 import Blip2Model
from serve_app.model.retrieval import Blip2Retrieval


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh model cache, set as ``$SERVE_APP_CACHE`` while the unit tests' models load."""
    path = tmp_path_factory.mktemp("serve-app-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SERVE_APP_CACHE", str(path))
        yield path


@pytest.fixture(scope="session", params=[TINY_RANDOM_OPT, TINY_RANDOM_T5], ids=["opt", "t5"])
def model(request: pytest.FixtureRequest, cache_dir: Path) -> Blip2Model:
    """Each builtin tiny model (OPT and Flan-T5 families), loaded by name."""
    return Blip2Model.load(ModelConfig(model_id=request.param))


@pytest.fixture(scope="session")
def opt_model(cache_dir: Path) -> Blip2Model:
    """The builtin tiny OPT-family model."""
    return Blip2Model.load(ModelConfig(model_id=TINY_RANDOM_OPT))


@pytest.fixture(scope="session")
def retrieval_model(cache_dir: Path) -> Blip2Retrieval:
    """The builtin tiny retrieval model."""
    return Blip2Retrieval.load(RetrievalModelConfig(model_id=TINY_RANDOM_ITM, max_text_tokens=24))
