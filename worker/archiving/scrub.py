"""Remove signing query strings from URLs inside a result body, streaming.

A result file echoes each media URL as ``file_url``; when we submitted a signed OSS URL, the
echo may carry its ``Expires``/``Signature``/``OSSAccessKeyId`` query string, and a signed URL is
a credential that must never reach the archive (`docs/contract.md`, "Archive layout"). Whether
DashScope echoes the query string is not documented, so every body passes through here: a
body without signed URLs is stored byte for byte; one with them is stored with each signed
URL's query string removed, and the manifest says so.

Only a query holding a signing parameter (:data:`SIGNING_PARAMETER`) is removed; other
URLs are left alone. Chunk boundaries are handled by holding back the bytes after the last
double quote, since a URL inside a JSON string cannot contain an unescaped one.
"""

from __future__ import annotations

import re

SIGNING_PARAMETER = re.compile(
    rb"(?:^|[?&])(?:Expires|Signature|OSSAccessKeyId|security-token|x-oss-[a-z-]+|X-Amz-[A-Za-z-]+)=",
    re.IGNORECASE,
)
_URL_WITH_QUERY = re.compile(rb"(https?:(?:\\?/){2}[^\"\s?#]*)\?([^\"\s#]*)")
HOLD_LIMIT = 64 * 1024
"""Bytes held back at most while waiting for a closing quote (a longer URL is not a URL)."""


def _strip(match: re.Match[bytes]) -> bytes:
    if SIGNING_PARAMETER.search(b"?" + match.group(2)):
        return match.group(1)
    return match.group(0)


def scrub(data: bytes) -> bytes:
    """``data`` with the signing query string of every URL in it removed."""
    return _URL_WITH_QUERY.sub(_strip, data)


class StreamScrubber:
    """:func:`scrub` over a body fed in chunks; ``changed`` tells whether anything was removed."""

    def __init__(self) -> None:
        self._held = b""
        self.changed = False

    def feed(self, chunk: bytes) -> bytes:
        """The scrubbed bytes that can be released after ``chunk`` (possibly fewer or more)."""
        data = self._held + chunk
        cut = data.rfind(b'"') + 1
        if cut == 0 and len(data) > HOLD_LIMIT:
            cut = len(data)
        self._held = data[cut:]
        return self._emit(data[:cut])

    def flush(self) -> bytes:
        """Whatever is still held, scrubbed; call once at the end."""
        held, self._held = self._held, b""
        return self._emit(held)

    def _emit(self, data: bytes) -> bytes:
        out = scrub(data)
        if out != data:
            self.changed = True
        return out
