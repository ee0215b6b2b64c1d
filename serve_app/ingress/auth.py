"""Bearer-token authentication of HTTP and gRPC callers, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from serve_app.config import AuthConfig
from serve_app.contract.errors import AuthenticationError
from serve_app.images.url_fetch import FETCH_OWNER


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


class BearerAuth:
    """Accepts a request when its bearer token equals one of the configured tokens.

    Tokens are kept as SHA-256 digests and every digest is compared with
    ``hmac.compare_digest``, so neither a token's length nor its prefix leaks through timing.
    """

    def __init__(self, tokens: Iterable[str]) -> None:
        self._digests = [_digest(token) for token in tokens]
        if not self._digests:
            raise ValueError("authentication is configured but no API key was found")

    @classmethod
    def from_config(cls, config: AuthConfig) -> BearerAuth | None:
        """Gather tokens from the inline list, the environment variable and the file.

        Returns None when authentication is not configured.

        Raises:
            ValueError: A configured source is missing or holds no token.
        """
        if not config.enabled:
            return None
        tokens = [key.get_secret_value() for key in config.api_keys]
        if config.api_keys_env:
            value = os.environ.get(config.api_keys_env)
            if value is None:
                raise ValueError(f"environment variable {config.api_keys_env} is not set")
            tokens += value.split(",")
        if config.api_keys_file:
            tokens += Path(config.api_keys_file).read_text(encoding="utf-8").splitlines()
        return cls(token.strip() for token in tokens if token.strip())

    def check(self, token: str | None) -> str:
        """The caller's key id (a digest prefix, for per-token quotas), if ``token`` is one of
        the configured tokens; else raise ``AuthenticationError``."""
        presented = _digest(token or "")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(presented, digest)
        if token is None or not matched:
            raise AuthenticationError("a valid bearer token is required")
        return presented.hex()[:16]

    def authorize(self, token: str | None) -> None:
        """Check a caller's token; the image URLs of its request then count against it."""
        FETCH_OWNER.set(self.check(token))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value (the scheme in any case)."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def require_auth_when_exposed(config: AuthConfig, http_host: str, grpc_port: int | None) -> None:
    """Refuse to serve anonymously where other hosts can connect, unless allowed.

    Args:
        config: The authentication settings.
        http_host: The address Serve's HTTP proxies listen on.
        grpc_port: The port of Serve's gRPC proxies, if they serve this application; they
            listen on every address (Serve has no host setting for them).

    Raises:
        ValueError: A proxy listens where other hosts can reach it, no token source is
            configured and ``allow_anonymous`` is not set.
    """
    if config.enabled or config.allow_anonymous:
        return
    fix = (
        "set auth.api_keys_env or auth.api_keys_file, or auth.allow_anonymous: true to serve "
        "anyone who can connect"
    )
    if not is_loopback(http_host):
        raise ValueError(
            f"the HTTP proxy listens on {http_host!r}, which other hosts can reach, and no API "
            f"key is configured: {fix}"
        )
    if grpc_port is not None:
        raise ValueError(
            f"the gRPC proxy listens on port {grpc_port} of every address (Serve has no host "
            f"setting for it) and no API key is configured: {fix}"
        )


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) only accepts connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
