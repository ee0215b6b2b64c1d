"""Bad input over HTTP: a table of malformed requests with their exact status and error code,
and a schema-driven fuzz of the whole API that must never produce a server error."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from ray import serve
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig

from serve_app.contract.errors import InvalidRequestError, ServeAppError
from serve_app.model.types import ModelRequest
from tests.support.images import image_bytes, make_image
from tests.support.serving import APP_NAME, deploy_config, fit_for_tests, load_config

MAX_BODY = 1_000_000
MAX_IMAGE = 300_000
MAX_PIXELS = 4_000_000
BODY_TIMEOUT_S = 2.0
PNG = image_bytes(0)
B64 = base64.b64encode(PNG).decode()


@pytest.fixture(scope="module")
def url(serve_url: str) -> str:
    config = fit_for_tests(load_config())
    config["applications"][0]["args"]["limits"].update(
        max_body_bytes=MAX_BODY,
        max_image_bytes=MAX_IMAGE,
        max_image_pixels=MAX_PIXELS,
        body_timeout_s=BODY_TIMEOUT_S,
    )
    # A generous batch window, so the concurrent calls of the poisoned-batch test share a batch.
    config["applications"][0]["deployments"][0]["user_config"]["batch_wait_timeout_s"] = 0.2
    deploy_config(config)
    return serve_url


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def as_json(**body: Any) -> dict[str, Any]:
    return {"json": body}


def with_image(raw: bytes, **fields: Any) -> dict[str, Any]:
    return as_json(image={"data": base64.b64encode(raw).decode()}, **fields)


def chunks(total: int) -> Iterator[bytes]:
    """A body sent with chunked transfer encoding (no Content-Length)."""
    for _ in range(total // 65536 + 1):
        yield b" " * 65536


Request = Callable[[], dict[str, Any]]
JSON = {"content-type": "application/json"}

CASES: dict[str, tuple[Request, int, str]] = {
    "body over the cap (Content-Length)": (
        lambda: {"data": b"{" + b" " * MAX_BODY + b"}", "headers": JSON},
        413,
        "payload_too_large",
    ),
    "body over the cap (chunked)": (
        lambda: {"data": chunks(MAX_BODY + 1), "headers": JSON},
        413,
        "payload_too_large",
    ),
    "base64 longer than the image cap": (
        lambda: as_json(image={"data": "A" * (MAX_IMAGE * 4 // 3 + 64)}, question="q"),
        413,
        "payload_too_large",
    ),
    "upload over the image cap": (
        lambda: {
            "files": {"image": ("a.png", b"\x89PNG" + b"0" * MAX_IMAGE)},
            "data": {"question": "q"},
        },
        413,
        "payload_too_large",
    ),
    "decompression bomb": (
        lambda: with_image(encoded(Image.new("L", (8000, 8000))), question="q"),
        413,
        "payload_too_large",
    ),
    "1x1 image": (
        lambda: with_image(encoded(Image.new("RGB", (1, 1))), question="q"),
        400,
        "invalid_image",
    ),
    "1x4000 image": (
        lambda: with_image(encoded(Image.new("RGB", (1, 4000))), question="q"),
        400,
        "invalid_image",
    ),
    "truncated PNG": (lambda: with_image(PNG[: len(PNG) // 2], question="q"), 400, "invalid_image"),
    "SVG": (
        lambda: with_image(b"<svg xmlns='http://www.w3.org/2000/svg'/>", question="q"),
        400,
        "invalid_image",
    ),
    "data URI of text": (
        lambda: as_json(image={"data": "data:text/plain;base64,aGVsbG8="}, question="q"),
        415,
        "unsupported_media_type",
    ),
    "malformed base64": (
        lambda: as_json(image={"data": "@@@@"}, question="q"),
        400,
        "invalid_base64",
    ),
    "deeply nested JSON": (
        lambda: {"data": b"[" * 100_000 + b"]" * 100_000, "headers": JSON},
        400,
        "malformed_body",
    ),
    "5000-digit number": (
        lambda: {"data": b'{"question": ' + b"9" * 5000 + b"}", "headers": JSON},
        400,
        "malformed_body",
    ),
    "invalid UTF-8": (
        lambda: {"data": b'{"question": "\xff\xfe"}', "headers": JSON},
        400,
        "malformed_body",
    ),
    "JSON array": (lambda: {"data": b"[1, 2]", "headers": JSON}, 422, "invalid_request"),
    "no content type": (lambda: {"data": b"{}"}, 415, "unsupported_media_type"),
    "text/plain": (
        lambda: {"data": b"{}", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported_media_type",
    ),
    "null image": (lambda: as_json(image=None, question="q"), 422, "invalid_request"),
    "question too long": (
        lambda: as_json(image={"data": B64}, question="x" * 2001),
        422,
        "invalid_request",
    ),
    "unknown setting": (
        lambda: as_json(image={"data": B64}, question="q", params={"beams": 2}),
        422,
        "invalid_request",
    ),
    "num_beams 0": (
        lambda: as_json(image={"data": B64}, question="q", params={"num_beams": 0}),
        422,
        "invalid_request",
    ),
    "top_p 2": (
        lambda: as_json(image={"data": B64}, question="q", params={"top_p": 2}),
        422,
        "invalid_request",
    ),
    "seed past 2**63 - 1": (
        lambda: as_json(image={"data": B64}, question="q", params={"seed": 2**63}),
        422,
        "invalid_request",
    ),
    "max_new_tokens text": (
        lambda: as_json(image={"data": B64}, question="q", params={"max_new_tokens": "many"}),
        422,
        "invalid_request",
    ),
    "two image parts": (
        lambda: {
            "files": [
                ("image", ("a.png", PNG, "image/png")),
                ("image", ("b.png", PNG, "image/png")),
            ],
            "data": {"question": "q"},
        },
        400,
        "malformed_body",
    ),
    "too many form fields": (
        lambda: {
            "files": {"image": ("a.png", PNG, "image/png")},
            "data": {f"f{i}": "x" for i in range(40)},
        },
        400,
        "malformed_body",
    ),
    "no image part": (
        lambda: {"files": {"other": ("a.png", PNG)}, "data": {"question": "q"}},
        422,
        "invalid_request",
    ),
    "image part as text": (
        lambda: {"files": {"x": ("x", b"")}, "data": {"image": "abc", "question": "q"}},
        422,
        "invalid_request",
    ),
    "upload of text/plain": (
        lambda: {"files": {"image": ("a.txt", b"hello", "text/plain")}, "data": {"question": "q"}},
        415,
        "unsupported_media_type",
    ),
    "setting given twice": (
        lambda: {
            "files": {"image": ("a.png", PNG, "image/png")},
            "data": {"question": "q", "num_beams": "1", "params": json.dumps({"num_beams": 2})},
        },
        422,
        "invalid_request",
    ),
    "params not JSON": (
        lambda: {
            "files": {"image": ("a.png", PNG, "image/png")},
            "data": {"question": "q", "params": "{"},
        },
        422,
        "invalid_request",
    ),
    "params with a 5000-digit number": (
        lambda: {
            "files": {"image": ("a.png", PNG, "image/png")},
            "data": {"question": "q", "params": '{"seed": ' + "9" * 5000 + "}"},
        },
        422,
        "invalid_request",
    ),
    "params nested 100k deep": (
        lambda: {
            "files": {"image": ("a.png", PNG, "image/png")},
            "data": {"question": "q", "params": "[" * 100_000 + "]" * 100_000},
        },
        422,
        "invalid_request",
    ),
}


@pytest.mark.parametrize(("make", "status", "code"), CASES.values(), ids=CASES.keys())
def test_bad_input_gets_its_exact_status_and_code(
    url: str, make: Request, status: int, code: str
) -> None:
    response = requests.post(f"{url}/v1/vqa", timeout=60, **make())
    assert response.status_code == status, response.text[:500]
    assert response.json()["error"]["code"] == code


@pytest.fixture
def api_schema(url: str) -> Any:
    """The live API document; cases are valid and invalid (negative) alike."""
    config = SchemathesisConfig.from_dict({"generation": {"mode": "all"}})
    return schemathesis.openapi.from_url(f"{url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzed_requests_never_cause_a_server_error(case: Any) -> None:
    """Fresh random cases every run (a fixed count per operation), valid and invalid."""
    case.call_and_validate(checks=[not_a_server_error], timeout=60)


def test_a_poisoned_item_fails_alone_inside_its_batch(url: str) -> None:
    """An item the real model cannot run (a prompt past its positions) is refused alone, with
    a typed error, before any generate runs; the rest of its batch answers as if alone."""
    server = serve.get_deployment_handle("Blip2Server", APP_NAME)
    image = np.asarray(make_image(0))
    good = [ModelRequest(task="vqa", text=f"what is {i}?", image=image) for i in range(5)]
    poisoned = ModelRequest(task="prompt", text="word " * 5000, image=image)
    alone = [server.generate.remote(r).result() for r in good]
    before = server.batch_size_counts.remote().result()

    responses = [server.generate.remote(r) for r in [*good[:2], poisoned, *good[2:]]]
    outcomes: list[Any] = []
    for response in responses:
        try:
            outcomes.append(response.result())
        except ServeAppError as error:
            outcomes.append(error)

    assert isinstance(outcomes[2], InvalidRequestError) and outcomes[2].param == "prompt"
    assert "word" not in str(outcomes[2])
    answers = [outcomes[i].model_dump(exclude={"batch_size"}) for i in (0, 1, 3, 4, 5)]
    assert answers == [result.model_dump(exclude={"batch_size"}) for result in alone]
    after = server.batch_size_counts.remote().result()
    grown = [size for size in after if after[size] > before.get(size, 0)]
    assert max(grown) > 1, "the poisoned item never shared a batch"


def test_an_upload_that_stalls_gets_408_and_frees_its_slot(url: str) -> None:
    """A client that declares a body and never finishes it is answered once the body deadline
    passes, instead of holding an ingress slot for as long as it likes."""
    address = url.removeprefix("http://")
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        head = (
            f"POST /v1/vqa HTTP/1.1\r\nHost: {address}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        client.sendall(head.encode() + b'{"question": "q", ')
        started = time.monotonic()
        reply = client.recv(65536).decode(errors="replace")
        waited = time.monotonic() - started
        while '"body_timeout"' not in reply and (more := client.recv(65536)):
            reply += more.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 408"), reply[:200]
    assert '"body_timeout"' in reply
    assert waited >= BODY_TIMEOUT_S - 0.5
