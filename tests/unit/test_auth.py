"""Bearer-token checks and where tokens come from."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.config import AuthConfig
from serve_app.contract.errors import AuthenticationError
from serve_app.ingress.auth import BearerAuth, bearer_token, require_auth_when_exposed


def test_not_configured_means_no_authentication() -> None:
    assert BearerAuth.from_config(AuthConfig()) is None


def test_tokens_from_every_source_are_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("from-file\n\n  spaced  \n")
    monkeypatch.setenv("TEST_KEYS", "from-env-1, from-env-2,")
    auth = BearerAuth.from_config(
        AuthConfig.model_validate(
            {"api_keys_env": "TEST_KEYS", "api_keys_file": str(keys), "api_keys": ["inline"]}
        )
    )
    assert auth is not None
    for token in ["from-file", "spaced", "from-env-1", "from-env-2", "inline"]:
        auth.check(token)


@pytest.mark.parametrize("token", [None, "", "inlin", "inline2", "INLINE", " inline"])
def test_anything_else_is_refused(token: str | None) -> None:
    auth = BearerAuth(["inline"])
    with pytest.raises(AuthenticationError) as refused:
        auth.check(token)
    assert refused.value.status_code == 401
    assert "inline" not in refused.value.message


def test_a_configured_source_that_yields_nothing_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EMPTY_KEYS", " , ")
    with pytest.raises(ValueError, match="no API key"):
        BearerAuth.from_config(AuthConfig(api_keys_env="EMPTY_KEYS"))
    with pytest.raises(FileNotFoundError):
        BearerAuth.from_config(AuthConfig(api_keys_file=str(tmp_path / "missing")))


def test_inline_tokens_are_hidden_in_the_config_repr() -> None:
    config = AuthConfig.model_validate({"api_keys": ["very-secret"]})
    assert "very-secret" not in repr(config)
    assert "very-secret" not in config.model_dump_json()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_anonymous_serving_on_loopback_is_allowed(host: str) -> None:
    require_auth_when_exposed(AuthConfig(), host, grpc_port=None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.7", "blip2.internal"])
def test_anonymous_serving_on_a_reachable_address_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="allow_anonymous"):
        require_auth_when_exposed(AuthConfig(), host, grpc_port=None)
    require_auth_when_exposed(AuthConfig(api_keys_env="BLIP2_API_KEYS"), host, grpc_port=None)
    require_auth_when_exposed(AuthConfig(allow_anonymous=True), host, grpc_port=None)


def test_anonymous_serving_with_the_grpc_proxy_on_is_refused_even_with_http_on_loopback() -> None:
    with pytest.raises(ValueError, match="gRPC proxy listens on port 9000 of every address"):
        require_auth_when_exposed(AuthConfig(), "127.0.0.1", grpc_port=9000)
    require_auth_when_exposed(AuthConfig(api_keys_env="BLIP2_API_KEYS"), "127.0.0.1", 9000)
    require_auth_when_exposed(AuthConfig(allow_anonymous=True), "127.0.0.1", grpc_port=9000)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_the_bearer_token_of_an_authorization_value(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token
