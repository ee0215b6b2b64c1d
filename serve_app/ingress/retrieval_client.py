"""Calling the retrieval deployment: typed calls, Ray's failures as typed errors, one retry."""

from __future__ import annotations

from typing import Any

from ray.serve.context import _get_serve_request_context
from ray.serve.handle import DeploymentHandle

from serve_app.ingress.model_client import call_with_retry, until_done
from serve_app.model.retrieval_types import (
    MatchRequest,
    MatchResult,
    RetrievalReplicaInfo,
    RetrievalRequest,
    RetrievalResult,
)


class RetrievalClient:
    """The retrieval deployment as the ingress calls it (each call is retried once if its
    replica dies: embedding and matching are pure)."""

    def __init__(self, handle: DeploymentHandle[Any]) -> None:
        self._handle = handle

    async def run_group(
        self, requests: list[RetrievalRequest]
    ) -> list[RetrievalResult | Exception]:
        """Embed texts and images sent together; one outcome per request."""
        request_id = _get_serve_request_context().request_id
        tagged = [r.model_copy(update={"request_id": request_id}) for r in requests]
        outcomes: list[RetrievalResult | Exception] = await call_with_retry(
            lambda: until_done(self._handle.run_group.remote(tagged))
        )
        return outcomes

    async def match(self, request: MatchRequest) -> MatchResult:
        """Score an image against texts, or a text against images."""
        request_id = _get_serve_request_context().request_id
        tagged = request.model_copy(update={"request_id": request_id})
        result: MatchResult = await call_with_retry(
            lambda: until_done(self._handle.match.remote(tagged))
        )
        return result

    async def describe(self) -> RetrievalReplicaInfo:
        """What a retrieval replica serves, and its live batching settings."""
        info: RetrievalReplicaInfo = await call_with_retry(
            lambda: until_done(self._handle.describe.remote())
        )
        return info
