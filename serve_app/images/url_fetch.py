"""Guarded fetching of caller-supplied image URLs (server-side request forgery defences).

Every hop of a fetch goes through :func:`check_url_allowed`: http(s) only, no credentials, and,
unless ``limits.allow_private_urls``, every address the host resolves to must be public. The
request is then sent to the checked address itself (the ``Host`` header and the TLS server name
stay the URL's host), so a second DNS answer cannot swap in a private address. Redirects are
followed by hand, bodies are streamed under a byte cap and everything runs under one deadline.
Environment proxies, ``.netrc`` and ``REQUESTS_CA_BUNDLE`` are ignored.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter

from serve_app.config import LimitsConfig
from serve_app.contract.errors import (
    ImageFetchError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

_log = logging.getLogger(__name__)

UNREACHABLE_HOST = "the image URL's host is not allowed or could not be resolved"
"""One message for a host that did not resolve and one that resolved to a refused address, so
callers cannot use the difference to map internal host names."""

_CHUNK_BYTES = 64 * 1024
_GRACE_S = 1.0
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HEADERS = {
    "User-Agent": "blip2-serve image fetcher",
    "Accept": "image/*",
    "Accept-Encoding": "identity",
}


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed :func:`check_url_allowed`, and the checked address to connect to."""

    scheme: str
    host: str
    port: int
    target: str
    address: str

    @property
    def host_header(self) -> str:
        """The ``Host`` header: the URL's host, with the port when it is not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{address}:{self.port}{self.target}"


def is_public_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is a globally routable unicast address.

    IPv4 addresses embedded in IPv6 (IPv4-mapped, 6to4, Teredo, NAT64) must be public too.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        embedded = [ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(v4 is not None and not is_public_address(v4) for v4 in embedded):
            return False
        if ip.is_site_local:
            return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )


def is_image_content_type(content_type: str | None) -> bool:
    """Whether a ``Content-Type`` may carry image bytes: absent, image/* or octet-stream."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return (
        not media_type
        or media_type.startswith("image/")
        or media_type == "application/octet-stream"
    )


def is_allowed_domain(host: str, domains: list[str]) -> bool:
    """Whether ``host`` (lower case, IDNA-encoded) is one of ``domains`` or a subdomain of one."""
    host = host.rstrip(".")
    return any(host == domain or host.endswith("." + domain) for domain in domains)


def check_url_allowed(url: str, limits: LimitsConfig, param: str = "image.url") -> CheckedURL:
    """Check one URL (the caller's or a redirect target) and resolve its host.

    Raises:
        ImageFetchError: URLs are not accepted, or the URL is malformed, not http(s), carries
            credentials, is off the domain allowlist, does not resolve, or resolves to a
            non-public address while private URLs are not allowed.
    """
    if not limits.allow_image_urls:
        raise ImageFetchError("this server does not accept image URLs; send the image", param)
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise ImageFetchError("the image URL is malformed", param)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ImageFetchError("the image URL is malformed", param) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageFetchError("only http and https image URLs are allowed", param)
    if "@" in parts.netloc:
        raise ImageFetchError("image URLs must not contain credentials", param)
    host = parts.hostname
    if not host:
        raise ImageFetchError("the image URL has no host", param)
    try:
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ImageFetchError("the image URL host is malformed", param) from None
    if limits.url_allowed_domains and not is_allowed_domain(host, limits.url_allowed_domains):
        raise ImageFetchError("the image URL's host is not on an allowed domain", param)
    port = (443 if scheme == "https" else 80) if port is None else port
    addresses = _resolve(host, port, param)
    if not limits.allow_private_urls and not all(map(is_public_address, addresses)):
        raise ImageFetchError(UNREACHABLE_HOST, param)
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return CheckedURL(scheme, host, port, target, str(addresses[0]))


def _resolve(host: str, port: int, param: str) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise ImageFetchError(UNREACHABLE_HOST, param) from None
    families = (socket.AF_INET, socket.AF_INET6)
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos if info[0] in families]
    if not addresses:
        raise ImageFetchError(UNREACHABLE_HOST, param)
    return addresses


class _PinnedAdapter(HTTPAdapter):  # type: ignore[misc]
    """Connects to the checked address; TLS still sends and verifies the URL's host name."""

    def __init__(self, server_hostname: str) -> None:
        self._server_hostname = server_hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, *args: Any, **pool_kwargs: Any) -> None:
        pool_kwargs["server_hostname"] = self._server_hostname  # dropped for plain http
        super().init_poolmanager(*args, **pool_kwargs)


async def fetch_image_url(url: str, limits: LimitsConfig, param: str = "image.url") -> bytes:
    """Fetch image bytes from a caller's URL in a worker thread, with every guard applied.

    Raises:
        ImageFetchError: Refused URL or redirect, too many redirects, non-2xx status,
            timeout or connection failure.
        PayloadTooLargeError: The body exceeds ``limits.max_image_bytes``.
        UnsupportedMediaTypeError: The response is not ``image/*`` or octet-stream.
    """
    fetch = asyncio.to_thread(_fetch, url, limits, param)
    try:
        return await asyncio.wait_for(fetch, limits.url_fetch_timeout_s + _GRACE_S)
    except TimeoutError:
        raise ImageFetchError("could not fetch the image: timed out", param) from None


def _fetch(url: str, limits: LimitsConfig, param: str) -> bytes:
    try:
        return _follow(url, limits, param, deadline=time.monotonic() + limits.url_fetch_timeout_s)
    except requests.exceptions.SSLError:
        reason = "TLS verification failed"
    except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
        reason = "timed out"
    except (requests.ConnectionError, urllib3.exceptions.ProtocolError):
        reason = "connection failed"
    except (requests.RequestException, urllib3.exceptions.HTTPError):
        reason = "invalid response"
    except OSError:
        reason = "connection failed"
    _log.debug("image fetch failed: %s", reason, exc_info=True)
    raise ImageFetchError(f"could not fetch the image: {reason}", param)


def _follow(url: str, limits: LimitsConfig, param: str, deadline: float) -> bytes:
    current = url
    for _ in range(limits.max_redirects + 1):
        checked = check_url_allowed(current, limits, param)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        with requests.Session() as session:
            session.trust_env = False
            session.mount("http://", _PinnedAdapter(checked.host))
            session.mount("https://", _PinnedAdapter(checked.host))
            with session.get(
                checked.pinned_url,
                headers={**_HEADERS, "Host": checked.host_header},
                timeout=(remaining, remaining),
                allow_redirects=False,
                stream=True,
            ) as response:
                if response.is_redirect:
                    current = urljoin(current, response.headers["location"])
                    continue
                return _read_body(response, limits, param, deadline)
    raise ImageFetchError(f"too many redirects (at most {limits.max_redirects})", param)


def _read_body(response: Any, limits: LimitsConfig, param: str, deadline: float) -> bytes:
    status: int = response.status_code
    if not 200 <= status < 300:
        raise ImageFetchError(f"the image URL returned HTTP {status}", param)
    content_type: str | None = response.headers.get("content-type")
    if not is_image_content_type(content_type):
        raise UnsupportedMediaTypeError(
            f"the image URL returned content type {(content_type or '')[:100]!r}, not an image",
            param,
        )
    cap = limits.max_image_bytes
    too_large = f"the image at the URL is larger than {cap} bytes"
    declared: str = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(too_large, param)
    body = bytearray()
    while chunk := response.raw.read1(_CHUNK_BYTES, decode_content=True):
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(too_large, param)
        if time.monotonic() > deadline:
            raise TimeoutError
    return bytes(body)
