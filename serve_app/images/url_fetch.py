"""Guarded fetching of caller-supplied image URLs (server-side request forgery defences).

Every hop of a fetch goes through :func:`check_url_allowed`: http(s) only, no credentials, and,
unless ``limits.allow_private_urls``, every address the host resolves to must be public. The
request is then sent to the checked address itself (the ``Host`` header and the TLS server name
stay the URL's host), so a second DNS answer cannot swap in a private address. Redirects are
followed by hand, bodies are streamed under a byte cap and everything runs under one deadline
that really ends the fetch (it is asynchronous: no thread keeps reading). Environment proxies,
``.netrc`` and CA bundle variables are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
import weakref
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import urljoin, urlsplit, urlunsplit

import certifi
import httpx

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
_RESOLVER = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-url-dns")
"""Host name lookups, apart from every other thread pool: slow DNS stalls only lookups."""
_SLOTS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str | None, asyncio.Semaphore]
] = weakref.WeakKeyDictionary()
"""Per event loop (one per replica): the replica's fetch semaphore (key None) and each fetch
owner's."""

FETCH_OWNER: ContextVar[str | None] = ContextVar("blip2_fetch_owner", default=None)
"""Whom the current request's URL fetches count against (an authenticated caller's key id);
None for callers without one (anonymous HTTP, trusted handle calls)."""
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


async def fetch_image_url(url: str, limits: LimitsConfig, param: str = "image.url") -> bytes:
    """Fetch image bytes from a caller's URL, with every guard applied, within one deadline.

    The fetch is asynchronous and ``limits.url_fetch_timeout_s`` bounds all of it (resolving,
    connecting, every redirect and every byte): when it passes, the connection is closed, so a
    server that trickles its answer holds nothing. At most ``limits.max_concurrent_url_fetches``
    run at once in a replica, and at most ``limits.max_concurrent_url_fetches_per_token`` for
    one ``FETCH_OWNER``; more wait within their deadline, a caller's extra fetches without
    holding a replica's slot.

    Raises:
        ImageFetchError: Refused URL or redirect, too many redirects, non-2xx status,
            timeout or connection failure.
        PayloadTooLargeError: The body exceeds ``limits.max_image_bytes``.
        UnsupportedMediaTypeError: The response is not ``image/*`` or octet-stream.
    """
    reason = "invalid response"
    try:
        async with (
            asyncio.timeout(limits.url_fetch_timeout_s),
            _owner_slots(limits),
            _slots(None, limits.max_concurrent_url_fetches),
        ):
            return await _follow(url, limits, param)
    except TimeoutError:
        reason = "timed out"
    except httpx.ConnectError as exc:
        reason = "TLS verification failed" if _is_tls_failure(exc) else "connection failed"
    except httpx.TimeoutException:
        reason = "timed out"
    except (httpx.HTTPError, OSError):
        pass
    _log.debug("image fetch failed: %s", reason, exc_info=True)
    raise ImageFetchError(f"could not fetch the image: {reason}", param)


async def _follow(url: str, limits: LimitsConfig, param: str) -> bytes:
    current = url
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(
        trust_env=False, follow_redirects=False, verify=_tls_context(), timeout=None
    ) as client:
        for _ in range(limits.max_redirects + 1):
            checked = await loop.run_in_executor(
                _RESOLVER, check_url_allowed, current, limits, param
            )
            request = client.build_request(
                "GET",
                checked.pinned_url,
                headers={**_HEADERS, "Host": checked.host_header},
                extensions={"sni_hostname": checked.host},
            )
            response = await client.send(request, stream=True)
            try:
                if response.is_redirect:
                    current = urljoin(current, response.headers["location"])
                    continue
                return await _read_body(response, limits, param)
            finally:
                await response.aclose()
    raise ImageFetchError(f"too many redirects (at most {limits.max_redirects})", param)


async def _read_body(response: httpx.Response, limits: LimitsConfig, param: str) -> bytes:
    status = response.status_code
    if not 200 <= status < 300:
        raise ImageFetchError(f"the image URL returned HTTP {status}", param)
    content_type = response.headers.get("content-type")
    if not is_image_content_type(content_type):
        raise UnsupportedMediaTypeError(
            f"the image URL returned content type {(content_type or '')[:100]!r}, not an image",
            param,
        )
    cap = limits.max_image_bytes
    too_large = f"the image at the URL is larger than {cap} bytes"
    declared = response.headers.get("content-length", "").strip()
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLargeError(too_large, param)
    body = bytearray()
    async for chunk in response.aiter_bytes(_CHUNK_BYTES):
        body += chunk
        if len(body) > cap:
            raise PayloadTooLargeError(too_large, param)
    return bytes(body)


def _slots(owner: str | None, size: int) -> asyncio.Semaphore:
    """This event loop's semaphore of ``owner`` (None: the replica's), made with ``size``."""
    by_owner = _SLOTS.setdefault(asyncio.get_running_loop(), {})
    slots = by_owner.get(owner)
    if slots is None:
        slots = by_owner[owner] = asyncio.Semaphore(size)
    return slots


def _tls_context() -> ssl.SSLContext:
    """Certificate verification against certifi's roots (the URL's host, not the address)."""
    return ssl.create_default_context(cafile=certifi.where())


def _is_tls_failure(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _owner_slots(limits: LimitsConfig) -> contextlib.AbstractAsyncContextManager[object]:
    """The current fetch owner's semaphore on this event loop (nothing without an owner)."""
    owner = FETCH_OWNER.get()
    if owner is None:
        return contextlib.nullcontext()
    return _slots(owner, limits.max_concurrent_url_fetches_per_token)
