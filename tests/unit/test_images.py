"""Untrusted image input: decoding, base64 / data URIs and the guarded URL fetch.

The URL tests run against HTTP servers on 127.0.0.1. Host names are answered by a fake
``socket.getaddrinfo`` (patching the environment, not the code under test) which can also route
a public-looking address to a loopback server, so the private-address guard is exercised end to
end with ``allow_private_urls=False``.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import certifi
import numpy as np
import pytest
from PIL import Image

from serve_app.config import LimitsConfig
from serve_app.contract.api import ImageSource
from serve_app.contract.errors import (
    ImageFetchError,
    InvalidBase64Error,
    InvalidImageError,
    PayloadTooLargeError,
    ServeAppError,
    UnsupportedMediaTypeError,
)
from serve_app.images import sources
from serve_app.images.data_uri import decode_base64_image
from serve_app.images.decode import decode_image
from serve_app.images.sources import decode_upload, load_image
from serve_app.images.url_fetch import check_url_allowed, fetch_image_url

LIMITS = LimitsConfig()
PRIVATE_OK = LimitsConfig(allow_private_urls=True)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
PUBLIC_IP = "93.184.216.34"  # what the fake DNS answers for public.example
PUBLIC_TLS_IP = "93.184.216.35"  # what it answers for secure.example


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def gradient_rgb(width: int = 6, height: int = 4) -> Image.Image:
    """Distinct pixel values, so lossless round trips can be compared exactly."""
    values = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3) * 3
    return Image.fromarray(values)


def noise_png(side: int = 64) -> bytes:
    values = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return encode(Image.fromarray(values), "PNG")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height pixels (the data is not there)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\x00\x00\x00" + b",\x00" * 8 + b";"


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (8, 6), color) for color in (RED, BLUE, GREEN)]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert getattr(Image.open(BytesIO(data)), "n_frames", 1) == 3
    return data


def rgba_png() -> bytes:
    image = Image.new("RGBA", (4, 2), (*BLUE, 255))
    image.putpixel((0, 0), (*RED, 0))  # fully transparent: white
    image.putpixel((1, 0), (0, 0, 0, 128))  # half transparent black: mid grey
    return encode(image, "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (4, 4), 1)
    image.putpalette([*RED, *GREEN] + [0] * 762)
    image.putpixel((0, 0), 0)
    return encode(image, "PNG", transparency=0)


def gray16_png() -> bytes:
    values = np.array([[0, 128 * 257, 65535], [65535, 128 * 257, 0]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return encode(image, "PNG")


def float_tiff() -> bytes:
    values = np.array([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]], dtype=np.float32)
    return encode(Image.fromarray(values), "TIFF")


def exif_rotated_jpeg() -> bytes:
    """30 wide x 10 high, red left half, blue right half; EXIF says rotate 90 degrees clockwise."""
    image = Image.new("RGB", (30, 10), RED)
    image.paste(BLUE, (15, 0, 30, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", exif=exif, quality=95)


def solid(mode: str, fmt: str, color: Any, size: tuple[int, int] = (8, 6), **kw: Any) -> bytes:
    return encode(Image.new(mode, size, color), fmt, **kw)


Check = tuple[tuple[int, int], tuple[int, int, int], int]  # (row, col), expected RGB, tolerance

GOOD: list[Any] = [
    pytest.param(lambda: encode(gradient_rgb(), "PNG"), (4, 6), "exact", id="png"),
    pytest.param(lambda: encode(gradient_rgb(), "BMP"), (4, 6), "exact", id="bmp"),
    pytest.param(lambda: encode(gradient_rgb(), "TIFF"), (4, 6), "exact", id="tiff"),
    pytest.param(lambda: encode(gradient_rgb(), "WEBP", lossless=True), (4, 6), "exact", id="webp"),
    pytest.param(
        lambda: solid("RGB", "JPEG", (200, 100, 50), quality=95),
        (6, 8),
        [((3, 3), (200, 100, 50), 6)],
        id="jpeg",
    ),
    pytest.param(animated_gif, (6, 8), [((0, 0), RED, 0), ((5, 7), RED, 0)], id="gif-first-frame"),
    pytest.param(
        rgba_png,
        (2, 4),
        [((0, 0), WHITE, 0), ((0, 1), (127, 127, 127), 1), ((1, 1), BLUE, 0)],
        id="rgba-on-white",
    ),
    pytest.param(
        palette_png_with_transparency,
        (4, 4),
        [((0, 0), WHITE, 0), ((2, 2), GREEN, 0)],
        id="palette-transparency",
    ),
    pytest.param(
        lambda: solid("LA", "PNG", (0, 0)), (6, 8), [((1, 1), WHITE, 0)], id="la-transparent"
    ),
    pytest.param(
        lambda: solid("CMYK", "JPEG", (0, 255, 255, 0), quality=95),
        (6, 8),
        [((3, 3), RED, 8)],
        id="cmyk-jpeg",
    ),
    pytest.param(
        gray16_png,
        (2, 3),
        [((0, 0), (0, 0, 0), 0), ((0, 1), (128, 128, 128), 0), ((0, 2), WHITE, 0)],
        id="png-16-bit-gray",
    ),
    pytest.param(
        lambda: solid("I", "TIFF", 65535), (6, 8), [((0, 0), WHITE, 0)], id="tiff-32-bit-int"
    ),
    pytest.param(
        float_tiff, (2, 3), [((0, 0), (0, 0, 0), 0), ((0, 1), (128, 128, 128), 0)], id="tiff-float"
    ),
    pytest.param(
        lambda: solid("L", "PNG", 77), (6, 8), [((2, 2), (77, 77, 77), 0)], id="grayscale"
    ),
    pytest.param(lambda: solid("1", "PNG", 1), (6, 8), [((2, 2), WHITE, 0)], id="bilevel"),
    pytest.param(
        exif_rotated_jpeg,
        (30, 10),
        [((2, 5), RED, 40), ((27, 5), BLUE, 40)],
        id="exif-rotated-jpeg",
    ),
    pytest.param(
        lambda: solid("RGB", "PNG", GREEN, size=(2, 400)),
        (400, 2),
        [((399, 1), GREEN, 0)],
        id="aspect-200-to-1",
    ),
]


@pytest.mark.parametrize(("make", "shape", "checks"), GOOD)
def test_decode_good_images(make: Callable[[], bytes], shape: tuple[int, int], checks: Any) -> None:
    array = decode_image(make(), LIMITS)
    assert array.dtype == np.uint8
    assert array.shape == (*shape, 3)
    assert array.flags.c_contiguous
    if checks == "exact":
        np.testing.assert_array_equal(array, np.asarray(gradient_rgb()))
        return
    for (row, col), expected, tolerance in checks:
        difference = np.abs(array[row, col].astype(int) - np.array(expected))
        assert difference.max() <= tolerance, (row, col, array[row, col], expected)


BAD: list[Any] = [
    pytest.param(lambda: b"", {}, InvalidImageError, id="empty"),
    pytest.param(lambda: random.Random(0).randbytes(2000), {}, InvalidImageError, id="random"),
    pytest.param(lambda: noise_png()[:3000], {}, InvalidImageError, id="truncated-png"),
    pytest.param(
        lambda: solid("RGB", "JPEG", RED, size=(64, 64))[:400],
        {},
        InvalidImageError,
        id="truncated-jpeg",
    ),
    pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, {}, InvalidImageError, id="bad-png"),
    pytest.param(noise_png, {"max_image_bytes": 1024}, PayloadTooLargeError, id="too-many-bytes"),
    pytest.param(
        lambda: png_declaring(100_000, 100_000), {}, PayloadTooLargeError, id="png-bomb-header"
    ),
    pytest.param(lambda: png_declaring(8000, 8000), {}, PayloadTooLargeError, id="png-over-limit"),
    pytest.param(
        lambda: gif_declaring(65535, 65535), {}, PayloadTooLargeError, id="gif-bomb-header"
    ),
    pytest.param(
        lambda: solid("RGB", "PNG", RED, size=(20, 20)),
        {"max_image_pixels": 399},
        PayloadTooLargeError,
        id="configured-pixel-limit",
    ),
    pytest.param(lambda: solid("RGB", "PNG", RED, size=(1, 1)), {}, InvalidImageError, id="1x1"),
    pytest.param(
        lambda: solid("RGB", "PNG", RED, size=(1, 4000)), {}, InvalidImageError, id="1x4000"
    ),
    pytest.param(
        lambda: solid("RGB", "PNG", RED, size=(401, 2)), {}, InvalidImageError, id="aspect-200.5"
    ),
    pytest.param(
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        {},
        InvalidImageError,
        id="svg",
    ),
    pytest.param(lambda: solid("RGB", "ICO", RED, size=(16, 16)), {}, InvalidImageError, id="ico"),
    pytest.param(lambda: solid("RGB", "PDF", RED), {}, InvalidImageError, id="pdf"),
    pytest.param(lambda: solid("RGB", "PPM", RED), {}, InvalidImageError, id="ppm"),
    pytest.param(lambda: b"hello, world" * 10, {}, InvalidImageError, id="text"),
]


@pytest.mark.filterwarnings("error")  # Pillow's DecompressionBombWarning must not escape either
@pytest.mark.parametrize(("make", "overrides", "error"), BAD)
def test_decode_bad_images(
    make: Callable[[], bytes], overrides: dict[str, int], error: type[ServeAppError]
) -> None:
    start = time.monotonic()
    with pytest.raises(error) as caught:
        decode_image(make(), LimitsConfig(**overrides), param="image")
    assert type(caught.value) is error
    assert caught.value.code == error.code
    assert caught.value.param == "image"
    assert "PIL" not in caught.value.message and "Error" not in caught.value.message
    assert time.monotonic() - start < 2.0


def test_unsupported_format_message() -> None:
    with pytest.raises(InvalidImageError, match="not a supported image format"):
        decode_image(b"GIF8 is not quite a GIF header", LIMITS)


def test_pixel_check_leaves_pillow_global_alone() -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(PayloadTooLargeError, match="100000x100000"):
        decode_image(png_declaring(100_000, 100_000), LIMITS)
    assert before == Image.MAX_IMAGE_PIXELS


FUZZ_SEEDS: list[tuple[str, dict[str, Any]]] = [
    ("PNG", {}),
    ("JPEG", {}),
    ("JPEG", {"progressive": True}),
    ("GIF", {}),
    ("BMP", {}),
    ("TIFF", {}),
    ("TIFF", {"compression": "tiff_lzw"}),
    ("WEBP", {}),
]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow's notes about corrupt metadata
def test_corrupted_images_raise_only_service_errors() -> None:
    rng = random.Random(1234)
    seeds = [encode(gradient_rgb(16, 12), fmt, **params) for fmt, params in FUZZ_SEEDS]
    outcomes = {"decoded": 0, "refused": 0}
    for _ in range(400):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(8, len(data)) :]
        try:
            array = decode_image(bytes(data), LIMITS)
        except ServeAppError:
            outcomes["refused"] += 1
        else:
            assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
            outcomes["decoded"] += 1
    assert outcomes["decoded"] and outcomes["refused"]


def test_decode_upload_checks_the_content_type() -> None:
    png = encode(gradient_rgb(), "PNG")
    for content_type in (None, "image/png", "IMAGE/JPEG; q=1", "application/octet-stream"):
        assert decode_upload(png, content_type, LIMITS).shape == (4, 6, 3)
    with pytest.raises(UnsupportedMediaTypeError) as caught:
        decode_upload(png, "text/plain", LIMITS)
    assert caught.value.param == "image" and caught.value.status_code == 415


# --- base64 and data URIs -------------------------------------------------------------------

RAW = bytes(range(256)) * 3 + b"\xfb\xff\xbf"  # standard base64 needs '+' and '/' for this
B64 = base64.b64encode(RAW).decode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(B64, id="plain"),
        pytest.param(f"data:image/png;base64,{B64}", id="data-uri"),
        pytest.param(f"DATA:Image/PNG;name=x.png;BASE64,{B64}", id="data-uri-params-case"),
        pytest.param(base64.urlsafe_b64encode(RAW).decode().rstrip("="), id="urlsafe-unpadded"),
        pytest.param(base64.encodebytes(RAW).decode(), id="mime-line-breaks"),
        pytest.param(f"  data:image/jpeg;base64,\r\n{B64[:40]}\n {B64[40:]}\t", id="whitespace"),
    ],
)
def test_base64_accepted(data: str) -> None:
    assert decode_base64_image(data, LIMITS) == RAW


@pytest.mark.parametrize(
    ("data", "error"),
    [
        pytest.param("", InvalidBase64Error, id="empty"),
        pytest.param("abc$", InvalidBase64Error, id="bad-character"),
        pytest.param("QUJDRA===", InvalidBase64Error, id="bad-padding"),
        pytest.param("QUJDR", InvalidBase64Error, id="bad-length"),
        pytest.param("QUJD\u00e9", InvalidBase64Error, id="non-ascii"),
        pytest.param("data:image/png;base64", InvalidBase64Error, id="data-uri-no-comma"),
        pytest.param("data:image/png,QUJD", InvalidBase64Error, id="data-uri-not-base64"),
        pytest.param("data:text/plain;base64,QUJD", UnsupportedMediaTypeError, id="text-data-uri"),
        pytest.param("data:;base64,QUJD", UnsupportedMediaTypeError, id="no-media-type"),
        pytest.param("A" * 2000, PayloadTooLargeError, id="too-long"),
        pytest.param("A" * 50_000_000, PayloadTooLargeError, id="far-too-long"),
    ],
)
def test_base64_refused(data: str, error: type[ServeAppError]) -> None:
    limits = LimitsConfig(max_image_bytes=1024)
    with pytest.raises(error) as caught:
        decode_base64_image(data, limits)
    assert type(caught.value) is error
    assert caught.value.param == "image.data"


def test_base64_size_boundary() -> None:
    limits = LimitsConfig(max_image_bytes=1024)
    assert len(decode_base64_image(base64.b64encode(b"x" * 1024).decode(), limits)) == 1024
    with pytest.raises(PayloadTooLargeError):
        decode_base64_image(base64.b64encode(b"x" * 1025).decode(), limits)


def test_load_image_from_data() -> None:
    source = ImageSource.from_bytes(encode(gradient_rgb(), "PNG"))
    array = asyncio.run(load_image(source, LIMITS))
    np.testing.assert_array_equal(array, np.asarray(gradient_rgb()))
    with pytest.raises(InvalidImageError) as caught:
        asyncio.run(load_image(ImageSource.from_bytes(b"not an image"), LIMITS))
    assert caught.value.param == "image.data"


# --- URL fetch ------------------------------------------------------------------------------

PNG = encode(Image.new("RGB", (8, 6), RED), "PNG")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    hits: list[tuple[str, str | None]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up early are expected


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def reply(self, status: int, body: bytes, content_type: str | None = "image/png") -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.hits.append((self.path, self.headers.get("Host")))
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/img.png":
            self.reply(200, PNG)
        elif url.path == "/img-untyped":
            self.reply(200, PNG, None)
        elif url.path == "/img-octet":
            self.reply(200, PNG, "application/octet-stream")
        elif url.path == "/page.html":
            self.reply(200, b"<html></html>", "text/html; charset=utf-8")
        elif url.path == "/redirect":
            self.send_response(int(query.get("status", ["302"])[0]))
            self.send_header("Location", query["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path.startswith("/hops/"):
            left = int(url.path.rsplit("/", 1)[1])
            if left == 0:
                self.reply(200, PNG)
            else:
                self.send_response(301)
                self.send_header("Location", f"/hops/{left - 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
        elif url.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(PNG)
        elif url.path == "/big-chunked":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(20):
                self.wfile.write(b"3e8\r\n" + b"x" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif url.path == "/big-unsized":
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"x" * 20_000)
        elif url.path == "/slow":
            time.sleep(2)
            self.reply(200, PNG)
        elif url.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)
        else:
            self.reply(404, b"not found", "text/plain")


@dataclass
class Running:
    server: Server
    port: int
    hits: list[tuple[str, str | None]] = field(default_factory=list)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


def start_server(tls: ssl.SSLContext | None = None) -> Running:
    server = Server(("127.0.0.1", 0), Handler)
    server.hits = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Running(server, server.server_address[1], server.hits)


@pytest.fixture(scope="module")
def web() -> Iterator[Running]:
    running = start_server()
    yield running
    running.server.shutdown()
    running.server.server_close()


@pytest.fixture
def trap() -> Iterator[Running]:
    """A server that must never be reached."""
    running = start_server()
    yield running
    running.server.shutdown()
    running.server.server_close()


def fetch(url: str, limits: LimitsConfig = PRIVATE_OK) -> bytes:
    return asyncio.run(fetch_image_url(url, limits))


def fetch_error(url: str, limits: LimitsConfig = PRIVATE_OK) -> ServeAppError:
    with pytest.raises(ServeAppError) as caught:
        fetch(url, limits)
    error = caught.value
    assert error.param == "image.url"
    assert "127.0.0.1" not in error.message and "requests" not in error.message
    return error


@pytest.fixture
def fake_dns(monkeypatch: pytest.MonkeyPatch, web: Running) -> dict[str, tuple[str, int]]:
    """Answer a few names; route the public test addresses to loopback servers."""
    real = socket.getaddrinfo
    names = {
        "public.example": [PUBLIC_IP],
        "secure.example": [PUBLIC_TLS_IP],
        "wrong-name.example": [PUBLIC_TLS_IP],
        "internal.example": ["10.0.0.5"],
        "mixed.example": [PUBLIC_IP, "192.168.1.20"],
        "ula.example": ["fd00::5"],
    }
    routes = {PUBLIC_IP: ("127.0.0.1", web.port)}

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in names:
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0))
                if ":" in ip
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port))
                for ip in names[host]
            ]
        if host in routes:
            return real(*routes[host], *args, **kwargs)
        return real(host, port, *args, **kwargs)

    real_connect = asyncio.BaseEventLoop.create_connection

    async def create_connection(
        loop: asyncio.BaseEventLoop, factory: Any, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        """The fake network: the public test addresses lead to the loopback servers."""
        if host in routes:
            host, port = routes[host]
        elif host is not None and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"a test tried to connect to {host}")
        return await real_connect(loop, factory, host, port, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(asyncio.BaseEventLoop, "create_connection", create_connection)
    return routes


@pytest.mark.parametrize("path", ["/img.png", "/img-untyped", "/img-octet", "/hops/2"])
def test_fetch_and_decode_from_loopback(web: Running, path: str) -> None:
    array = asyncio.run(load_image(ImageSource(url=web.url(path)), PRIVATE_OK))
    assert array.shape == (6, 8, 3) and tuple(array[0, 0]) == RED


def test_fetch_public_host_pins_the_checked_address(web: Running, fake_dns: object) -> None:
    assert fetch("http://public.example/img.png", LIMITS) == PNG
    assert web.hits[-1] == ("/img.png", "public.example")
    assert fetch("http://public.example:8080/img-octet?x=1", LIMITS) == PNG
    assert web.hits[-1] == ("/img-octet?x=1", "public.example:8080")


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{trap}/",
        "http://localhost:{trap}/",
        "http://[::ffff:127.0.0.1]:{trap}/",
        "http://2130706433:{trap}/",
        "http://0x7f.1:{trap}/",
    ],
)
def test_loopback_refused_without_touching_it(trap: Running, url: str) -> None:
    error = fetch_error(url.format(trap=trap.port), LIMITS)
    assert isinstance(error, ImageFetchError) and "not allowed" in error.message
    assert trap.hits == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://255.255.255.255/",
        "http://224.0.0.1/",
        "http://[::1]/",
        "http://[::]/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://[fec0::1]/",
        "http://[ff0e::1]/",
        "http://[::127.0.0.1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::1]/",
        "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/",
        "http://internal.example/",
        "http://mixed.example/",
        "http://ula.example/",
    ],
)
def test_private_addresses_refused(url: str, fake_dns: object) -> None:
    with pytest.raises(ImageFetchError, match="not allowed"):
        check_url_allowed(url, LIMITS)
    check_url_allowed(url, PRIVATE_OK)  # the same URL passes when private URLs are allowed


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://93.184.216.34/x.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("javascript:alert(1)", "only http and https"),
        ("http://user:pass@93.184.216.34/x.png", "credentials"),
        ("http://user@127.0.0.1/x.png", "credentials"),
        ("http:///x.png", "no host"),
        ("http://93.184.216.34:99999/", "malformed"),
        ("http://93.184.216.34/a b", "malformed"),
        ("http://no-such-host.invalid/", "not allowed or could not be resolved"),
    ],
)
def test_malformed_or_forbidden_urls(url: str, message: str) -> None:
    with pytest.raises(ImageFetchError, match=message):
        check_url_allowed(url, PRIVATE_OK)


def test_an_unknown_host_and_a_refused_address_read_the_same() -> None:
    messages = []
    for url in ("http://no-such-host.invalid/", "http://127.0.0.1/", "http://localhost/"):
        with pytest.raises(ImageFetchError) as refused:
            check_url_allowed(url, LIMITS)
        messages.append(refused.value.message)
    assert len(set(messages)) == 1, messages


def test_public_addresses_pass_the_check(fake_dns: object) -> None:
    assert check_url_allowed("http://93.184.216.34/x.png?a=1", LIMITS).target == "/x.png?a=1"
    assert check_url_allowed("https://[2606:4700:4700::1111]/", LIMITS).port == 443
    assert check_url_allowed("http://[::ffff:93.184.216.34]/", LIMITS).address == "::ffff:5db8:d822"
    checked = check_url_allowed("https://public.example:8443/", LIMITS)
    assert checked.address == PUBLIC_IP and checked.host_header == "public.example:8443"


def test_redirects_are_checked_at_every_hop(web: Running, trap: Running, fake_dns: object) -> None:
    def via_public(to: str) -> str:
        return f"http://public.example/redirect?to={quote(to, safe='')}"

    for target in (
        f"http://127.0.0.1:{trap.port}/img.png",
        f"http://[::ffff:127.0.0.1]:{trap.port}/img.png",
        f"http://2130706433:{trap.port}/img.png",
        "http://internal.example/img.png",
    ):
        error = fetch_error(via_public(target), LIMITS)
        assert isinstance(error, ImageFetchError) and "not allowed" in error.message
    assert trap.hits == []
    assert fetch(via_public("/img.png"), LIMITS) == PNG  # a relative, allowed redirect


@pytest.mark.parametrize(
    ("to", "message"),
    [
        ("ftp://127.0.0.1/img.png", "only http and https"),
        ("file:///etc/passwd", "only http and https"),
        ("http://user:pw@127.0.0.1:{port}/img.png", "credentials"),
    ],
)
def test_redirect_to_forbidden_url(web: Running, to: str, message: str) -> None:
    target = quote(to.format(port=web.port), safe="")
    error = fetch_error(web.url(f"/redirect?to={target}&status=307"))
    assert isinstance(error, ImageFetchError) and message in error.message


def test_redirect_limit(web: Running) -> None:
    limits = LimitsConfig(allow_private_urls=True, max_redirects=2)
    assert fetch(web.url("/hops/2"), limits) == PNG
    error = fetch_error(web.url("/hops/3"), limits)
    assert isinstance(error, ImageFetchError) and "too many redirects" in error.message
    no_redirects = LimitsConfig(allow_private_urls=True, max_redirects=0)
    assert isinstance(fetch_error(web.url("/hops/1"), no_redirects), ImageFetchError)


@pytest.mark.parametrize("path", ["/big-declared", "/big-chunked", "/big-unsized"])
def test_oversize_body(web: Running, path: str) -> None:
    limits = LimitsConfig(allow_private_urls=True, max_image_bytes=4096)
    error = fetch_error(web.url(path), limits)
    assert type(error) is PayloadTooLargeError and error.status_code == 413


def test_http_error_status(web: Running) -> None:
    error = fetch_error(web.url("/missing"))
    assert type(error) is ImageFetchError and "404" in error.message


def test_non_image_content_type(web: Running) -> None:
    error = fetch_error(web.url("/page.html"))
    assert type(error) is UnsupportedMediaTypeError and "text/html" in error.message


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_timeouts(web: Running, path: str) -> None:
    limits = LimitsConfig(allow_private_urls=True, url_fetch_timeout_s=0.3)
    start = time.monotonic()
    error = fetch_error(web.url(path), limits)
    assert error.message == "could not fetch the image: timed out"
    assert time.monotonic() - start < 1.5


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    error = fetch_error(f"http://127.0.0.1:{port}/img.png")
    assert error.message == "could not fetch the image: connection failed"


@pytest.fixture(scope="module")
def tls_web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Running, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=secure.example"),
            *("-addext", "subjectAltName=DNS:secure.example"),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    running = start_server(context)
    yield running, cert
    running.server.shutdown()
    running.server.server_close()


def test_https_verifies_the_url_host_on_the_pinned_address(
    tls_web: tuple[Running, Path],
    fake_dns: dict[str, tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, cert = tls_web
    fake_dns[PUBLIC_TLS_IP] = ("127.0.0.1", running.port)
    monkeypatch.setattr(certifi, "where", lambda: str(cert))
    assert fetch("https://secure.example/img.png", LIMITS) == PNG
    assert running.hits[-1] == ("/img.png", "secure.example")
    error = fetch_error("https://wrong-name.example/img.png", LIMITS)
    assert error.message == "could not fetch the image: TLS verification failed"


def test_fetch_leaves_no_warnings(web: Running) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fetch(web.url("/img.png")) == PNG


@pytest.mark.parametrize(
    ("mode", "fmt", "fits"),
    [
        ("RGB", "PNG", True),
        ("L", "PNG", True),
        ("RGBA", "PNG", False),  # 4 bytes a pixel: over the bytes of an RGB image at the cap
        ("F", "TIFF", False),  # 32-bit float
        ("I;16", "PNG", True),  # 2 bytes a pixel: under the RGB result
    ],
)
def test_the_pixel_budget_counts_bytes_per_pixel(mode: str, fmt: str, fits: bool) -> None:
    """At the pixel cap, what an image costs to decode depends on its bands and depth."""
    limits = LimitsConfig(max_image_pixels=600 * 500)
    params = {"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}
    raw = encode(Image.new(mode, (600, 500)), fmt, **params)
    assert len(raw) < 40_000  # a small file either way
    if fits:
        assert decode_image(raw, limits).shape == (500, 600, 3)
    else:
        with pytest.raises(PayloadTooLargeError, match="decodes to"):
            decode_image(raw, limits)
        assert decode_image(raw, LimitsConfig(max_image_pixels=600 * 500 * 2)).shape[2] == 3


def test_only_images_small_in_bytes_and_pixels_are_decoded_on_the_event_loop() -> None:
    def png(side: int) -> bytes:
        buffer = BytesIO()
        Image.new("RGB", (side, side), "white").save(buffer, "PNG")
        return buffer.getvalue()

    huge_but_small_file = png(2000)
    assert len(huge_but_small_file) <= sources.INLINE_DECODE_BYTES
    assert not sources.decodes_inline(huge_but_small_file)  # 4 M pixels: a thread's work
    assert sources.decodes_inline(png(64))  # cheaper than a hop to a thread and back
    assert not sources.decodes_inline(png(64) + bytes(sources.INLINE_DECODE_BYTES))
