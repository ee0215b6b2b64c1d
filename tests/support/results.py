"""Model requests with test images, and checks of a model's per-request outcomes."""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_app.contract.api import GenerationParams
from serve_app.model.types import ModelRequest, ModelResult, Task
from tests.support.images import make_image


def image(index: int, size: int = 48) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Test image ``index`` as the RGB array the model receives."""
    return np.asarray(make_image(index, size), dtype=np.uint8)


def request(
    text: str = "What is in the picture?",
    index: int = 0,
    task: Task = "vqa",
    size: int = 48,
    **params: Any,
) -> ModelRequest:
    """A model request about test image ``index`` (6 new tokens unless ``params`` say)."""
    return ModelRequest(
        task=task,
        text=text,
        image=image(index, size),
        params=GenerationParams.model_validate({"max_new_tokens": 6, **params}),
    )


def ok(result: ModelResult | Exception) -> ModelResult:
    """The result, failing the test with the error if the request failed."""
    assert isinstance(result, ModelResult), repr(result)
    return result
