"""gRPC calls from tests, with their outcome (status, details, trailing metadata) as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.generated.blip2_pb2_grpc import Blip2ServiceStub
from tests.support.images import image_bytes


@dataclass(frozen=True)
class Outcome:
    """How a call ended."""

    code: grpc.StatusCode
    details: str = ""
    trailing: dict[str, Any] = field(default_factory=dict)
    """The trailing metadata, but for the request id Serve adds to every call."""
    request_id: str = ""
    response: Any = None


def vqa_request(question: str, index: int = 0) -> pb.VqaRequest:
    """A question about test image ``index``, as raw PNG bytes."""
    return pb.VqaRequest(question=question, image=pb.Image(data=image_bytes(index)))


def call_vqa(target: str, request: pb.VqaRequest, timeout_s: float = 60) -> Outcome:
    """Send one ``Vqa`` call on a channel of its own and return how it ended."""
    with grpc.insecure_channel(target) as channel:
        try:
            response = Blip2ServiceStub(channel).Vqa(request, timeout=timeout_s)
        except grpc.RpcError as error:
            failed: Any = error
            trailing = dict(failed.trailing_metadata() or ())
            request_id = trailing.pop("request_id", "")
            return Outcome(failed.code(), failed.details() or "", trailing, request_id)
    return Outcome(grpc.StatusCode.OK, response=response)
