"""``FullResolutionBlip2``: the real model, reporting no image input size to the ingress.

The ingress then sends every image to the model replica as decoded, at full resolution, and
the replica's image processor resizes it: the service as it was before resizing moved to the
ingress. Only the ``before`` side of a before/after measurement uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

from serve_app.config import ModelConfig
from serve_app.model.blip2 import Blip2Model
from serve_app.model.types import GenerationObserver, ModelInfo, ModelRequest, ModelResult


class FullResolutionBlip2:
    """``Blip2Model`` whose description has no ``image_input``."""

    def __init__(self, config: ModelConfig) -> None:
        self._model = Blip2Model.load(config)

    def generate(
        self, requests: Sequence[ModelRequest], observer: GenerationObserver | None = None
    ) -> list[ModelResult | Exception]:
        """Generate exactly as ``Blip2Model`` does."""
        return self._model.generate(requests, observer)

    def info(self) -> ModelInfo:
        """The model's description with no image input size."""
        return self._model.info().model_copy(update={"image_input": None})
