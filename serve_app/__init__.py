"""BLIP-2 visual question answering, captioning and image-text retrieval on Ray Serve.

The public names are importable from here without loading Ray, torch or transformers;
the application builder lives in ``serve_app.app:build_app``.
"""

from serve_app.config import (
    AppConfig,
    BatchingConfig,
    LimitsConfig,
    ModelConfig,
    RetrievalModelConfig,
)
from serve_app.contract.api import (
    CaptionRequest,
    CaptionResponse,
    GenerateRequest,
    GenerateResponse,
    GenerationParams,
    ImageSource,
    ModelList,
    VQARequest,
    VQAResponse,
)
from serve_app.contract.errors import ServeAppError
from serve_app.contract.retrieval import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    RankRequest,
    RankResponse,
)
from serve_app.grpc.client import Blip2GrpcClient

__all__ = [
    "AppConfig",
    "BatchingConfig",
    "Blip2GrpcClient",
    "CaptionRequest",
    "CaptionResponse",
    "EmbeddingsRequest",
    "EmbeddingsResponse",
    "GenerateRequest",
    "GenerateResponse",
    "GenerationParams",
    "ImageSource",
    "LimitsConfig",
    "ModelConfig",
    "ModelList",
    "RankRequest",
    "RankResponse",
    "RetrievalModelConfig",
    "ServeAppError",
    "VQARequest",
    "VQAResponse",
]
