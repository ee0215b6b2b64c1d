"""``FullResolutionBlip2``: the real model, reporting no image input size to the ingress.

The ingress then sends every image to the model replica as decoded, at full resolution, and
the replica's image processor resizes it: the service as it was before resizing moved to the
ingress. Only the ``before`` side of a before/after measurement uses it.
"""

from __future__ import annotations

from serve_app.engine.blip2_engine import Blip2Engine
from serve_app.model.types import ModelInfo


class FullResolutionBlip2(Blip2Engine):
    """``Blip2Engine`` whose description has no ``image_input``."""

    def info(self) -> ModelInfo:
        """The model's description with no image input size."""
        return super().info().model_copy(update={"image_input": None})
