"""Operator policy on image URLs: turning them off and the domain allowlist."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from pydantic import ValidationError

from serve_app.config import LimitsConfig
from serve_app.contract.errors import ImageFetchError
from serve_app.images.url_fetch import check_url_allowed, is_allowed_domain

PUBLIC = "93.184.215.14"


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name resolves to one public address (no network is used)."""

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_urls_can_be_turned_off() -> None:
    with pytest.raises(ImageFetchError, match="does not accept image URLs"):
        check_url_allowed("https://example.com/a.png", LimitsConfig(allow_image_urls=False))


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://example.com/a.png", True),
        ("https://cdn.example.com/a.png", True),
        ("https://EXAMPLE.com./a.png", True),
        ("https://images.example.org:8443/a.png", True),
        ("https://example.com.evil.net/a.png", False),
        ("https://notexample.com/a.png", False),
        ("https://example.co/a.png", False),
        ("https://evil.net/example.com/a.png", False),
        ("https://evil.net/?u=https://example.com", False),
        (f"https://{PUBLIC}/a.png", False),
    ],
)
def test_the_domain_allowlist_matches_whole_labels(url: str, allowed: bool) -> None:
    limits = LimitsConfig(url_allowed_domains=["Example.com", "images.example.org."])
    if allowed:
        assert check_url_allowed(url, limits).address == PUBLIC
    else:
        with pytest.raises(ImageFetchError, match="allowed domain"):
            check_url_allowed(url, limits)


def test_allowlist_entries_must_be_bare_domains() -> None:
    for bad in ["https://example.com", "example.com/path", "", "example.com:80"]:
        with pytest.raises(ValidationError):
            LimitsConfig(url_allowed_domains=[bad])
    assert is_allowed_domain("a.b.c", ["b.c"]) and not is_allowed_domain("ab.c", ["b.c"])
