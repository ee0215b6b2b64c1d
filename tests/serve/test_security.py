"""Authentication and server-side request forgery defences, end to end over HTTP."""

from __future__ import annotations

import base64
import http.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from tests.support.http_server import StaticServer, static_server
from tests.support.images import image_bytes
from tests.support.serving import deploy_config, fit_for_tests, load_config

FILE_TOKEN = "file-token-0123456789abcdef"
ENV_TOKEN = "env-token-fedcba9876543210"
BODY = {"image": {"data": base64.b64encode(image_bytes(0)).decode()}, "question": "what?"}


@pytest.fixture(scope="module")
def trap() -> Iterator[StaticServer]:
    """A loopback server standing in for an internal service; it must never be reached."""
    with static_server({"/secret.png": ("image/png", image_bytes(1))}) as server:
        yield server


@pytest.fixture(scope="module")
def url(serve_url: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    token_file = tmp_path_factory.mktemp("secrets") / "api-keys"
    token_file.write_text(f"{FILE_TOKEN}\n\n")
    config = fit_for_tests(load_config())
    app = config["applications"][0]
    app["args"]["auth"] = {"api_keys_file": str(token_file), "api_keys_env": "BLIP2_API_KEYS"}
    app["runtime_env"] = {"env_vars": {"BLIP2_API_KEYS": f"{ENV_TOKEN}, "}}
    deploy_config(config)
    return serve_url


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("token", [FILE_TOKEN, ENV_TOKEN])
def test_a_valid_token_from_the_file_or_the_environment_is_let_in(url: str, token: str) -> None:
    response = requests.post(f"{url}/v1/vqa", json=BODY, headers=bearer(token), timeout=60)
    assert response.status_code == 200, response.text
    models = requests.get(f"{url}/v1/models", headers=bearer(token), timeout=30)
    assert models.status_code == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        bearer("wrong"),
        bearer(FILE_TOKEN[:-1]),
        bearer(FILE_TOKEN + "x"),
        {"Authorization": f"Basic {FILE_TOKEN}"},
        {"Authorization": FILE_TOKEN},
        {"X-API-Key": FILE_TOKEN},
    ],
    ids=["none", "wrong", "prefix", "longer", "basic", "no-scheme", "other-header"],
)
def test_requests_without_a_valid_token_get_401(url: str, headers: dict[str, str]) -> None:
    for method, path in [("POST", "/v1/vqa"), ("POST", "/v1/caption"), ("GET", "/v1/models")]:
        response = requests.request(method, f"{url}{path}", json=BODY, headers=headers, timeout=30)
        assert response.status_code == 401, (path, response.text)
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert response.json()["error"]["code"] == "unauthorized"


def test_health_routes_and_the_api_document_stay_open(url: str) -> None:
    assert requests.get(f"{url}/healthz", timeout=10).status_code == 200
    assert requests.get(f"{url}/readyz", timeout=10).status_code == 200
    document = requests.get(f"{url}/openapi.json", timeout=10).json()
    assert "HTTPBearer" in document["components"]["securitySchemes"]


def raw_request(url: str, method: str, target: str, headers: dict[str, str]) -> int:
    """Send a request line exactly as written (no client-side path normalisation)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        body = b'{"image": {"data": "x"}, "question": "q"}'
        connection.request(
            method, target, body=body, headers={**headers, "Content-Type": "application/json"}
        )
        return connection.getresponse().status
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/v1/vqa", {"Host": "localhost"}),
        ("/v1/vqa", {"Host": "127.0.0.1:1", "X-Forwarded-Host": "healthz"}),
        ("/v1/vqa", {"X-Original-URL": "/healthz", "X-Rewrite-URL": "/healthz"}),
        ("/v1/vqa?/healthz", {}),
        ("/v1/vqa#/healthz", {}),
        ("/healthz/../v1/vqa", {}),
        ("//v1/vqa", {}),
        ("/v1/vqa/", {}),
        ("/V1/VQA", {}),
        ("/v1/%76qa", {}),
        ("http://localhost/healthz/../v1/vqa", {}),
    ],
)
def test_no_path_or_host_trick_gets_past_authentication(
    url: str, target: str, headers: dict[str, str]
) -> None:
    assert raw_request(url, "POST", target, headers) in {401, 404, 405}


SSRF_HOSTS = [
    "127.0.0.1",
    "localhost",
    "127.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "[::1]",
    "[::ffff:127.0.0.1]",
    "0.0.0.0",
]


@pytest.mark.parametrize("host", SSRF_HOSTS)
def test_image_urls_to_internal_addresses_are_refused_without_contact(
    url: str, trap: StaticServer, host: str
) -> None:
    port = urlsplit(trap.base_url).port
    body: dict[str, Any] = {**BODY, "image": {"url": f"http://{host}:{port}/secret.png"}}
    response = requests.post(f"{url}/v1/vqa", json=body, headers=bearer(FILE_TOKEN), timeout=30)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("image_fetch_failed", "image.url")
    assert str(port) not in error["message"] and "127.0.0.1" not in error["message"]
    assert trap.hits["/secret.png"] == 0


def test_refused_urls_of_other_forms(url: str, trap: StaticServer) -> None:
    port = urlsplit(trap.base_url).port
    for image_url in [
        f"http://user:pass@127.0.0.1:{port}/secret.png",
        "file:///etc/passwd",
        f"gopher://127.0.0.1:{port}/",
        f"ftp://127.0.0.1:{port}/secret.png",
        f"http://127.0.0.1:{port}\\@example.com/secret.png",
    ]:
        body = {**BODY, "image": {"url": image_url}}
        response = requests.post(f"{url}/v1/vqa", json=body, headers=bearer(FILE_TOKEN), timeout=30)
        assert response.status_code == 400, (image_url, response.text)
    assert trap.hits["/secret.png"] == 0


def test_unsafe_token_sources_fail_the_start(tmp_path: Path) -> None:
    from serve_app.config import AuthConfig
    from serve_app.ingress.auth import BearerAuth

    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no API key"):
        BearerAuth.from_config(AuthConfig(api_keys_file=str(empty)))
    with pytest.raises(ValueError, match="NOT_SET_ANYWHERE"):
        BearerAuth.from_config(AuthConfig(api_keys_env="NOT_SET_ANYWHERE"))
