"""Reading and parsing request bodies: caps, JSON, multipart forms (no Ray, no server)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request
from starlette.types import Message

from serve_app.config import LimitsConfig
from serve_app.contract.api import VQARequest
from serve_app.contract.errors import (
    BodyTimeoutError,
    InvalidRequestError,
    MalformedBodyError,
    PayloadTooLargeError,
    ServeAppError,
)
from serve_app.http import body
from tests.support.images import image_bytes

BOUNDARY = "testboundary"
HUGE_NUMBER = '{"seed": ' + "9" * 5000 + "}"
DEEP_NESTING = "[" * 200_000 + "]" * 200_000


def form(*parts: tuple[str, str | bytes]) -> bytes:
    lines: list[bytes] = []
    for name, value in parts:
        lines.append(f"--{BOUNDARY}\r\n".encode())
        if isinstance(value, bytes):
            disposition = f'form-data; name="{name}"; filename="x.png"'
            lines.append(f"Content-Disposition: {disposition}\r\n".encode())
            lines.append(b"Content-Type: image/png\r\n\r\n" + value + b"\r\n")
        else:
            lines.append(f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
            lines.append(value.encode() + b"\r\n")
    lines.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(lines)


def request(content: bytes, content_type: str, chunks: int = 1) -> Request:
    size = max(1, -(-len(content) // chunks))
    messages: list[Message] = [
        {"type": "http.request", "body": content[i : i + size], "more_body": True}
        for i in range(0, len(content), size)
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})

    async def receive() -> Message:
        return messages.pop(0)

    headers = [(b"content-type", content_type.encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def parse_form(*parts: tuple[str, str | bytes]) -> VQARequest:
    content = form(*parts)

    async def parse() -> VQARequest:
        incoming = request(content, f"multipart/form-data; boundary={BOUNDARY}")
        raw = await body.read_body(incoming, LimitsConfig())
        return await body.parse_multipart(incoming, raw, VQARequest)

    return asyncio.run(parse())


def test_an_upload_keeps_its_bytes_and_flat_or_json_settings() -> None:
    raw = image_bytes(0)
    parsed = parse_form(("image", raw), ("question", "Why?"), ("max_new_tokens", "7"))
    assert parsed.question == "Why?" and parsed.params.max_new_tokens == 7
    assert parsed.image.upload is not None
    assert (parsed.image.upload.content, parsed.image.upload.content_type) == (raw, "image/png")
    as_json = parse_form(("image", raw), ("question", "q"), ("params", '{"num_beams": 2}'))
    assert as_json.params.num_beams == 2


@pytest.mark.parametrize(
    ("parts", "param"),
    [
        ((("question", "q"),), "image"),
        ((("image", b"x"), ("question", "q"), ("question", "again")), "question"),
        ((("image", b"x"), ("question", "q"), ("params", "[1]")), "params"),
        (
            (("image", b"x"), ("question", "q"), ("top_p", "0.5"), ("params", '{"top_p": 1}')),
            "top_p",
        ),
        ((("image", b"x"), ("question", "q"), ("colour", "red")), "colour"),
        (
            (("image", b"x"), ("question", "q"), ("params", '{"seed": ' + "9" * 5000 + "}")),
            "params",
        ),
        ((("image", b"x"), ("question", "q"), ("params", "[" * 200_000 + "]" * 200_000)), "params"),
    ],
)
def test_bad_forms_are_typed_errors_naming_the_field(
    parts: tuple[tuple[str, str | bytes], ...], param: str
) -> None:
    with pytest.raises(InvalidRequestError) as refused:
        parse_form(*parts)
    assert refused.value.param == param


def test_the_body_cap_holds_while_streaming() -> None:
    content = b"{" + b" " * 5000 + b"}"

    async def read(limit: int) -> bytes:
        incoming = request(content, "application/json", chunks=8)
        return await body.read_body(incoming, LimitsConfig(max_body_bytes=limit))

    assert asyncio.run(read(6000)) == content
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read(4000))


def test_each_body_is_capped_by_what_its_media_type_can_carry() -> None:
    limits = LimitsConfig(max_image_bytes=30_000, max_prompt_chars=100)
    form_cap = body.body_cap(limits, "multipart/form-data")
    json_cap = body.body_cap(limits, "application/json")
    # The image as bytes, or as base64 (a third larger), plus room for its text and settings.
    assert 30_000 < form_cap < json_cap < 30_000 * 4 // 3 + 80_000 < limits.max_body_bytes
    assert body.body_cap(LimitsConfig(max_body_bytes=2048), "application/json") == 2048

    async def read(size: int, kind: str) -> bytes:
        return await body.read_body(request(b" " * size, kind, chunks=4), limits)

    assert len(asyncio.run(read(json_cap, "application/json"))) == json_cap
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read(json_cap + 1, "application/json"))
    with pytest.raises(PayloadTooLargeError):
        asyncio.run(read(form_cap + 1, "multipart/form-data"))


def test_a_body_that_trickles_past_its_deadline_is_a_408() -> None:
    sent = [b'{"question": ', b'"q"']

    async def receive() -> Message:
        if sent:
            return {"type": "http.request", "body": sent.pop(0), "more_body": True}
        await asyncio.sleep(3600)  # the client never sends the rest
        raise AssertionError("unreachable")

    async def read() -> bytes:
        headers = [(b"content-type", b"application/json")]
        incoming = Request({"type": "http", "method": "POST", "headers": headers}, receive)
        return await body.read_body(incoming, LimitsConfig(body_timeout_s=0.1))

    with pytest.raises(BodyTimeoutError) as late:
        asyncio.run(read())
    assert late.value.status_code == 408


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b"{not json", MalformedBodyError),
        (b"[" * 100_000, MalformedBodyError),
        (b'{"question": 1}', InvalidRequestError),
        (b'{"question": "q", "image": {"url": "a", "data": "b"}}', InvalidRequestError),
    ],
)
def test_bad_json_is_a_typed_error(content: bytes, error: type[ServeAppError]) -> None:
    with pytest.raises(error):
        body.parse_json(content, VQARequest)


def test_only_the_accepted_media_types_pass() -> None:
    accepted = ("application/json",)
    kind = body.require_media_type(request(b"", "Application/JSON; charset=utf-8"), accepted)
    assert kind == "application/json"
    with pytest.raises(ServeAppError) as refused:
        body.require_media_type(request(b"", "text/plain"), accepted)
    assert refused.value.status_code == 415
