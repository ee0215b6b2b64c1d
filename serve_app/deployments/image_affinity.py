"""``ImageAffinityRouter``: requests about the same image go to the same model replica.

A model replica keeps image features by image (its feature cache), so a follow-up question
about an image, or a chat that sends its image again, is cheaper on the replica that saw it.
The router ranks that replica first: the one whose id scores highest with the image's key
(rendezvous hashing, so a replica that comes or goes moves only its own images). If it is full,
the request goes where Serve's power-of-two choice sends it. The key is a digest of a sparse
sample of the image's pixels, which costs the ingress microseconds; a grouped call goes by its
first request's image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray.serve._private.request_router.pow_2_router import PowerOfTwoChoicesRequestRouter
from ray.serve.request_router import PendingRequest, RunningReplica

from serve_app.model.types import ModelRequest

SAMPLE_STRIDE = 7
"""Every 7th pixel in each direction is hashed: enough to tell images apart."""


def image_key(image: np.ndarray[Any, Any]) -> bytes:
    """A routing key for ``image``: its shape and a sparse sample of its pixels."""
    digest = hashlib.blake2b(str(image.shape).encode(), digest_size=8)
    digest.update(np.ascontiguousarray(image[::SAMPLE_STRIDE, ::SAMPLE_STRIDE]).tobytes())
    return digest.digest()


def request_image_key(args: Sequence[Any]) -> bytes | None:
    """The key of the first image in a call's arguments (a request or a group of them)."""
    for arg in args:
        first = arg[0] if isinstance(arg, list) and arg else arg
        if isinstance(first, ModelRequest):
            return image_key(first.image)
    return None


def preferred_replica(key: bytes, replicas: Sequence[RunningReplica]) -> RunningReplica:
    """The replica whose id scores highest with ``key``."""
    return max(
        replicas,
        key=lambda r: hashlib.blake2b(
            key + r.replica_id.unique_id.encode(), digest_size=8
        ).digest(),
    )


class ImageAffinityRouter(PowerOfTwoChoicesRequestRouter):  # type: ignore[misc]
    """Serve's power-of-two router, with the image's own replica ranked first."""

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """The image's replica first, then Serve's own choice."""
        fallback: list[list[RunningReplica]] = await super().choose_replicas(
            candidate_replicas, pending_request
        )
        if pending_request is None or len(candidate_replicas) < 2:
            return fallback
        key = request_image_key(pending_request.args)
        if key is None:
            return fallback
        return [[preferred_replica(key, candidate_replicas)], *fallback]
