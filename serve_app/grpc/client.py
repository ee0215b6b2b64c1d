"""``Blip2GrpcClient``: a typed, blocking client of ``blip2.v1.Blip2Service``.

Failed calls raise the service's typed errors (``serve_app.contract.errors``), found by the
``error-code`` trailing metadata, just as handle callers get them; a failure of the connection
itself stays a ``grpc.RpcError``.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc

from serve_app.contract.api import GenerationParams
from serve_app.contract.errors import ModelOverloadedError, ServeAppError
from serve_app.grpc.generated import blip2_pb2 as pb
from serve_app.grpc.generated.blip2_pb2_grpc import Blip2ServiceStub
from serve_app.grpc.status import ERROR_CODE_KEY, ERROR_PARAM_KEY, RETRY_AFTER_KEY

ResultT = TypeVar("ResultT")

ImageInput = bytes | str | Path | pb.Image
"""An image: a file's bytes, a file path, an http(s) URL (a string with ``://``), or the
message itself."""


def image_message(image: ImageInput) -> pb.Image:
    """The ``Image`` message of an image as :data:`ImageInput` takes it."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, bytes):
        return pb.Image(data=image)
    if isinstance(image, str) and "://" in image:
        return pb.Image(url=image)
    path = Path(image)
    media_type = mimetypes.guess_type(path.name)[0] or ""
    return pb.Image(data=path.read_bytes(), media_type=media_type)


def params_message(params: GenerationParams | None) -> pb.GenerationParams:
    """The settings a caller set (validated by the same model as the HTTP API's)."""
    if params is None:
        return pb.GenerationParams()
    return pb.GenerationParams(**params.model_dump(exclude_defaults=True))


def _error_classes(base: type[ServeAppError]) -> dict[str, type[ServeAppError]]:
    classes = {base.code: base}
    for subclass in base.__subclasses__():
        classes.update(_error_classes(subclass))
    return classes


_ERRORS = _error_classes(ServeAppError)


def service_error(error: grpc.RpcError) -> Exception:
    """The typed error a failed call stands for (the ``RpcError`` itself if the service did
    not name one: a connection failure, a deadline set by the caller, a message too large)."""
    call: Any = error
    metadata = {key: value for key, value in call.trailing_metadata() or ()}
    kind = _ERRORS.get(str(metadata.get(ERROR_CODE_KEY)))
    if kind is None:
        return error
    param = metadata.get(ERROR_PARAM_KEY)
    if issubclass(kind, ModelOverloadedError):
        retry_after_s = int(metadata.get(RETRY_AFTER_KEY, 1000)) / 1000
        return kind(call.details(), param, retry_after_s=retry_after_s)
    return kind(call.details(), param)


class Blip2GrpcClient:
    """Calls the service over one channel; close it (or use ``with``) when done.

    Args:
        target: ``host:port`` of Serve's gRPC proxy.
        token: The bearer token, when the service has API keys.
        timeout_s: Each call's deadline (None: none).
        channel: A channel of the caller's own (TLS, options), instead of an insecure one to
            ``target``.
    """

    def __init__(
        self,
        target: str = "localhost:9000",
        *,
        token: str | None = None,
        timeout_s: float | None = 120.0,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._channel = channel or grpc.insecure_channel(target)
        self._stub = Blip2ServiceStub(self._channel)
        self._metadata: tuple[tuple[str, str | bytes], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._timeout_s = timeout_s

    def vqa(
        self, image: ImageInput, question: str, params: GenerationParams | None = None
    ) -> pb.VqaResponse:
        """Answer a question about an image."""
        request = pb.VqaRequest(
            question=question, image=image_message(image), params=params_message(params)
        )
        return self._call(self._stub.Vqa, request)

    def caption(
        self, image: ImageInput, prompt: str | None = None, params: GenerationParams | None = None
    ) -> pb.CaptionResponse:
        """Caption an image, optionally continuing ``prompt``."""
        request = pb.CaptionRequest(
            prompt=prompt, image=image_message(image), params=params_message(params)
        )
        return self._call(self._stub.Caption, request)

    def generate(
        self, image: ImageInput, prompt: str, params: GenerationParams | None = None
    ) -> pb.GenerateResponse:
        """Continue a raw prompt about an image."""
        return self._call(self._stub.Generate, self._generate_request(image, prompt, params))

    def generate_stream(
        self, image: ImageInput, prompt: str, params: GenerationParams | None = None
    ) -> Iterator[pb.GenerateStreamResponse]:
        """Continue a raw prompt, yielding text deltas as they come, then the ``end``.

        Closing the iterator early cancels the call, and the service stops generating.
        """
        responses = self._stub.GenerateStream(
            self._generate_request(image, prompt, params),
            timeout=self._timeout_s,
            metadata=self._metadata,
        )
        try:
            for response in responses:
                if response.end.finish_reason != "error":
                    yield response
        except grpc.RpcError as error:
            raise service_error(error) from None
        finally:
            responses.cancel()

    def models(self) -> pb.ModelsResponse:
        """The served model, its limits and its batching settings."""
        return self._call(self._stub.Models, pb.ModelsRequest())

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()

    def __enter__(self) -> Blip2GrpcClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _generate_request(
        self, image: ImageInput, prompt: str, params: GenerationParams | None
    ) -> pb.GenerateRequest:
        return pb.GenerateRequest(
            prompt=prompt, image=image_message(image), params=params_message(params)
        )

    def _call(self, method: Callable[..., ResultT], request: Any) -> ResultT:
        try:
            return method(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise service_error(error) from None
