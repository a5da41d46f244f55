"""Images of HTTP requests: ``data:`` URLs, bare base64, and (when allowed) http(s) URLs, to PIL images.

Why limits at every step: an image is the largest thing a client sends, and the
cheapest way to hurt a server (a huge body, a small file that decodes to
gigapixels, a URL that never finishes). The encoded size is checked before
decoding base64, the pixel count from the header before decoding pixels, and a
URL is fetched only from the hosts the server allows, with the byte limit
counted while reading and one deadline for the whole fetch. Every failure is an
``APIError`` (400, or 413 for a limit) that says what to change.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import urllib.parse
from dataclasses import dataclass, field
from typing import FrozenSet, Optional

from PIL import Image, ImageOps

from .errors import APIError, bad_request


@dataclass(frozen=True)
class ImageLimits:
    """What the server takes: bytes of one encoded image, pixels of one decoded image, and URLs."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    #: Hosts whose http(s) URLs are fetched ("host" or "host:port"; "*" any); empty: URLs refused.
    url_hosts: FrozenSet[str] = field(default_factory=frozenset)
    url_timeout_s: float = 10.0


def _too_large(what: str, size: int, limit: int, flag: str, param: str) -> APIError:
    return APIError(413, f"{what} is {size:,} bytes; this server takes at most {limit:,} ({flag})",
                    param=param, code="image_too_large")


def decode_base64(text: str, limits: ImageLimits, param: str) -> bytes:
    """Base64 text (whitespace allowed) -> bytes, its size checked before decoding."""
    compact = "".join(text.split())
    if len(compact) // 4 * 3 > limits.max_bytes:
        raise _too_large("the image", len(compact) // 4 * 3, limits.max_bytes, "--max-image-bytes", param)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request("the image is not valid base64", param=param, code="invalid_image") from None


def decode_data_url(url: str, limits: ImageLimits, param: str) -> bytes:
    """``data:[image/...][;base64],DATA`` -> bytes."""
    header, comma, payload = url.partition(",")
    if not comma:
        raise bad_request("a data: URL has a comma before its data (data:image/png;base64,...)", param=param,
                          code="invalid_image")
    parts = header[len("data:"):].split(";")
    media_type = parts[0].strip().lower()
    if media_type and not media_type.startswith("image/"):
        raise bad_request(f"the data: URL holds {media_type!r}, not an image", param=param, code="invalid_image")
    if "base64" not in (p.strip().lower() for p in parts[1:]):
        raise bad_request("only base64 data: URLs are taken (data:image/png;base64,...)", param=param,
                          code="invalid_image")
    return decode_base64(payload, limits, param)


def _host_allowed(url: str, hosts: FrozenSet[str], param: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as error:  # a port that is not a number, or out of range
        raise bad_request(f"the image URL is not valid: {error}", param=param, code="invalid_image") from None
    host = (parts.hostname or "").lower()
    with_port = f"{host}:{port}" if port else host
    return "*" in hosts or host in hosts or with_port in hosts


async def fetch_url(url: str, limits: ImageLimits, param: str) -> bytes:
    """The body of an http(s) URL from an allowed host, within the byte limit and the deadline."""
    if not limits.url_hosts:
        raise bad_request("this server does not fetch image URLs; send the image as a data: URL "
                          "(data:image/png;base64,...), or start the server with --image-url-hosts",
                          param=param, code="image_url_not_allowed")
    if not _host_allowed(url, limits.url_hosts, param):
        host = urllib.parse.urlsplit(url).netloc
        raise bad_request(f"this server fetches images only from {', '.join(sorted(limits.url_hosts))}, "
                          f"not from {host!r} (--image-url-hosts)", param=param, code="image_url_not_allowed")
    import httpx

    async def read() -> bytes:
        # Redirects are not followed: they could lead off the allowed hosts.
        async with httpx.AsyncClient(timeout=limits.url_timeout_s, follow_redirects=False) as client:
            async with client.stream("GET", url) as response:
                if response.status_code != 200:
                    raise bad_request(f"fetching {url} answered HTTP {response.status_code}", param=param,
                                      code="image_fetch_failed")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > limits.max_bytes:
                    raise _too_large(f"the image at {url}", int(declared), limits.max_bytes, "--max-image-bytes",
                                     param)
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > limits.max_bytes:
                        raise _too_large(f"the image at {url}", len(body), limits.max_bytes,
                                         "--max-image-bytes", param)
                return bytes(body)

    try:
        return await asyncio.wait_for(read(), limits.url_timeout_s)
    except asyncio.TimeoutError:
        raise bad_request(f"fetching {url} took longer than {limits.url_timeout_s:g} s", param=param,
                          code="image_fetch_failed") from None
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        raise bad_request(f"fetching {url} failed: {type(error).__name__}: {error}", param=param,
                          code="image_fetch_failed") from None


#: Images of at most this many pixels are decoded on the event loop (well under a millisecond, less
#: than a hop to a worker thread and back); larger ones in a thread, so that the loop is not held up.
INLINE_DECODE_PIXELS = 256 * 256


def read_header(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Bytes -> a PIL image whose header is read and whose pixel count is checked, not yet decoded."""
    try:
        picture = Image.open(io.BytesIO(data))
        width, height = picture.size
    except Image.DecompressionBombError:
        raise APIError(413, f"the image has more pixels than this server takes ({limits.max_pixels:,}, "
                       "--max-image-pixels)", param=param, code="image_too_large") from None
    except Exception as error:  # PIL raises many kinds on hostile input
        raise bad_request(f"the image cannot be read: {type(error).__name__}: {error}", param=param,
                          code="invalid_image") from None
    if width * height > limits.max_pixels:
        raise APIError(413, f"the image is {width} x {height} = {width * height:,} pixels; this server takes at "
                       f"most {limits.max_pixels:,} (--max-image-pixels)", param=param, code="image_too_large")
    return picture


def decode_pixels(picture: Image.Image, param: str) -> Image.Image:
    """The pixels of an image whose header ``read_header`` checked, upright."""
    try:
        picture.load()
        # Upright as a browser shows it (a phone photo's EXIF orientation), so that boxes match the view.
        return ImageOps.exif_transpose(picture)
    except Exception as error:
        raise bad_request(f"the image cannot be decoded: {type(error).__name__}: {error}", param=param,
                          code="invalid_image") from None


def open_image(data: bytes, limits: ImageLimits, param: str) -> Image.Image:
    """Bytes -> a decoded PIL image; the pixel count is checked from the header first."""
    return decode_pixels(read_header(data, limits, param), param)


async def load_image(source, limits: ImageLimits, param: str, *, bare_base64: bool) -> Image.Image:
    """A request's image (a data: URL, an http(s) URL, or with ``bare_base64`` plain base64) -> PIL image."""
    if not isinstance(source, str) or not source.strip():
        raise bad_request("the image must be a non-empty string: a data: URL (data:image/png;base64,...)"
                          + (", base64" if bare_base64 else "") + " or an http(s) URL", param=param,
                          code="invalid_image")
    source = source.strip()
    scheme = source.split(":", 1)[0].lower() if ":" in source[:8] else ""
    if scheme == "data":
        data = decode_data_url(source, limits, param)
    elif scheme in ("http", "https"):
        data = await fetch_url(source, limits, param)
    elif bare_base64 and not scheme:
        data = decode_base64(source, limits, param)
    else:
        raise bad_request("the image must be a data: URL (data:image/png;base64,...) or an http(s) URL",
                          param=param, code="invalid_image")
    picture = read_header(data, limits, param)
    width, height = picture.size
    if width * height <= INLINE_DECODE_PIXELS:
        return decode_pixels(picture, param)
    # Decoding a large image takes long enough to hold up every other request on the loop.
    return await asyncio.to_thread(decode_pixels, picture, param)


def image_limits(max_bytes: int, max_pixels: int, url_hosts: Optional[str], url_timeout_s: float) -> ImageLimits:
    """ImageLimits from the command line's values (``url_hosts``: comma-separated)."""
    hosts = frozenset(h.strip().lower() for h in (url_hosts or "").split(",") if h.strip())
    return ImageLimits(max_bytes, max_pixels, hosts, url_timeout_s)
