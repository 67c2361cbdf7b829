"""Download one ``transcription_url`` to a spool file, checking it while it streams.

Rules (issue "Result archiving"; `docs/dashscope-transcription.md`, "The transcription result
file"): only URLs that ``RESULT_URL_REGEX`` matches as a whole; redirects followed only on the
same scheme and host (and only to matching URLs); connect/read timeouts; at most
``RESULT_MAX_BYTES``; sha256 and byte count computed while streaming; the body must be complete
JSON. A body up to ``memory_bytes`` (default :data:`MEMORY_BODY_BYTES`) is kept in memory and
checked once at the end (:func:`check_json`: msgspec's syntax check, 3 ms per 4 MB against 25 ms
for :func:`json.loads`, which stays the authority on what it refuses); a longer one spills to a
spool file and is checked by a streaming parser (ijson) as the bytes arrive, so memory stays at
one chunk.

Deadlines: ``RESULT_TIMEOUT_SECONDS`` bounds connecting and each read; the whole download is
bounded by ``max(RESULT_TIMEOUT_SECONDS, bytes / RESULT_MIN_BYTES_PER_SECOND)`` (``bytes`` the
declared ``Content-Length``, else what arrived so far), checked as bytes arrive, so a host
that dribbles a byte at a time ends within that deadline plus one read timeout.

Valid JSON is any JSON: integers of any length (the check does not convert numbers, so
Python's 4300-digit int-string limit does not apply to bodies in memory) and any depth (a
document too deep for :func:`json.loads` is checked by ijson's iterative parser).

Errors (:mod:`core.errors`), reasons in brackets:

- :class:`ExpiredLinkError` (``expired_link``): 403 or 404, or the link's ``Expires`` has
  passed (nothing is requested then): the signed link has expired.
- :class:`TransientError`: 429 or 5xx (``result_http_429``, ``result_http_5xx``), timeouts and
  the total deadline (``result_timeout``), network errors and truncated bodies
  (``result_network``), no space for the spool file (``disk_full``).
- :class:`PermanentError`: a URL or redirect outside the pattern, or not a valid URL (control
  characters; ``url_not_allowed``), other 4xx (``result_http_4xx``), a body over the cap
  (``result_too_large``), a body that is not JSON (``result_not_json``), a spool directory
  that cannot be written (``destination_rejected``).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import ijson
import msgspec

from core.errors import ExpiredLinkError, PermanentError, Reason, TransientError
from core.events import link_expiry
from core.logs import strip_query
from core.settings import Settings
from worker import metrics
from worker.archiving.destinations import local_error
from worker.archiving.scrub import StreamScrubber, scrub

MEMORY_BODY_BYTES = 8 * 1024 * 1024
"""Bodies up to this many bytes stay in memory; longer ones stream through a spool file. A
body's peak is about twice its size (the bytes, then the decoded text or the scrubbed copy:
17 MB measured at the limit), so ``ARCHIVE_FILE_CONCURRENCY`` (4) such bodies finishing at the
same moment would briefly take about 70 MB in one process."""
MAX_REDIRECTS = 3


@dataclass(frozen=True, slots=True)
class FetchedBody:
    """A downloaded, checked body of ``size`` bytes with hex ``sha256``, as it is to be stored.

    Bodies up to the fetcher's ``memory_bytes`` are in memory (``data``, ``path`` None); larger ones
    are in the spool file ``path`` (``data`` None). ``redacted`` is True when signed query
    strings were removed (:mod:`worker.archiving.scrub`); ``served_size``/``served_sha256``
    then describe the body as the result host served it.
    """

    size: int
    sha256: str
    data: bytes | None = None
    path: Path | None = None
    redacted: bool = False
    served_size: int = 0
    served_sha256: str = ""

    def read(self) -> bytes:
        """The whole body (tests and small bodies; a large one is read from its file)."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


@ijson.coroutine  # type: ignore[untyped-decorator]  # ijson has no type hints
def _discard() -> Generator[None, Any, None]:
    while True:
        yield


class _Body:
    """Size cap, sha256 and JSON check of a body fed in chunks, and where its bytes are kept.

    The first ``memory_bytes`` stay in memory (a list of chunks, joined once) and are checked
    with :func:`json.loads` at the end (fast, in C); a longer body spills to a spool file in
    ``spool_dir`` and is checked by ijson's push parser as it streams, so memory stays bounded.
    """

    def __init__(self, max_bytes: int, spool_dir: str | None, memory_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.memory_bytes = memory_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self.head: list[bytes] = []
        self.path: Path | None = None
        self._file: IO[bytes] | None = None
        self._parser: Any = None
        self._scrubber = StreamScrubber()
        self._stored = hashlib.sha256()
        self._stored_size = 0

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise PermanentError(
                f"result over {self.max_bytes} bytes", reason=Reason.RESULT_TOO_LARGE
            )
        self.digest.update(chunk)
        if self._file is None and self.size <= self.memory_bytes:
            self.head.append(chunk)
            return
        if self._file is None:
            self._spill()
        with _json_errors():
            self._parser.send(chunk)
        self._write(self._scrubber.feed(chunk))

    def expect(self, declared: int) -> None:
        """The answer declares ``declared`` bytes: past ``memory_bytes``, spool from the start."""
        if declared > self.memory_bytes and self._file is None:
            self._spill()

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._stored.update(data)
        self._stored_size += len(data)
        with _spool_errors():
            self._file.write(data)

    def _spill(self) -> None:
        with _spool_errors():
            handle, name = tempfile.mkstemp(prefix="result-", suffix=".json", dir=self.spool_dir)
        self.path = Path(name)
        self._file = os.fdopen(handle, "wb")
        self._parser = ijson.basic_parse_coro(_discard())
        head, self.head = self.head, []
        for chunk in head:  # chunk by chunk: no joined copy of the head
            with _json_errors():
                self._parser.send(chunk)
            self._write(self._scrubber.feed(chunk))

    def finish(self) -> FetchedBody:
        """Close the spool and check the JSON; the body, or :class:`PermanentError`."""
        served_sha256 = self.digest.hexdigest()
        if self._file is None:
            served, self.head = b"".join(self.head), []
            check_json(served)
            data = scrub(served)
            if len(data) == self.size:  # scrubbing only removes bytes
                return FetchedBody(self.size, served_sha256, data=served)
            sha256 = hashlib.sha256(data).hexdigest()
            return FetchedBody(len(data), sha256, data, None, True, self.size, served_sha256)
        self._write(self._scrubber.flush())
        with _spool_errors():
            self._file.close()
        with _json_errors():
            self._parser.close()
        if not self._scrubber.changed:
            return FetchedBody(self.size, served_sha256, path=self.path)
        stored, size = self._stored.hexdigest(), self._stored_size
        return FetchedBody(size, stored, None, self.path, True, self.size, served_sha256)

    def discard(self) -> None:
        """Close and remove the spool file, if any."""
        if self._file is not None:
            self._file.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _drop(_: dict[str, Any]) -> None:
    return None


_SYNTAX = msgspec.json.Decoder(msgspec.Raw)
"""Decoding to :class:`msgspec.Raw` checks the JSON syntax of the whole document and builds
nothing (the value is skipped, then returned as the buffer it spans)."""


def check_json(data: bytes) -> None:
    """Raise :class:`PermanentError` (``result_not_json``) unless ``data`` is one JSON document.

    Fast path: valid UTF-8 that msgspec parses as one document is JSON (3 ms per 4 MB, nothing
    built). Anything the fast path refuses is judged by :func:`json.loads` (25 ms per 4 MB), so
    the fast path only ever says yes where :func:`json.loads` says yes too
    (``tests/worker/archiving/test_json_check.py`` checks both on mutated documents): what
    msgspec refuses but Python accepts (UTF-16 or UTF-32 bodies, a byte-order mark, encoded
    surrogates, lone ``\\ud800`` escapes, nesting past msgspec's depth limit) stays valid JSON.
    """
    try:
        _check_utf8(data)
        _SYNTAX.decode(data)
    except (UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        _check_json_slowly(data)


UTF8_SLICE_BYTES = 64 * 1024


def _check_utf8(data: bytes) -> None:
    """Raise :class:`UnicodeDecodeError` unless ``data`` is UTF-8 (msgspec's check is not).

    ASCII is checked without a copy; other text is decoded in slices of
    :data:`UTF8_SLICE_BYTES`, so no string as long as the body is made (a fresh 4 MB one costs
    about 5 ms in page faults alone).
    """
    if data.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(data)
    for start in range(0, len(data), UTF8_SLICE_BYTES):
        decoder.decode(view[start : start + UTF8_SLICE_BYTES])
    decoder.decode(b"", final=True)


def _check_json_slowly(data: bytes) -> None:
    """:func:`check_json` by :func:`json.loads`, the authority.

    Numbers are not converted (``parse_int=len``), so long integers are fine; objects are
    dropped as soon as they are parsed (``object_hook``: less memory, about 25 % less CPU); a
    document too deep for the recursive :func:`json.loads` is checked again by ijson, which does
    not recurse.
    """
    with _json_errors():
        try:
            json.loads(data, parse_constant=_no_constants, parse_int=len, object_hook=_drop)
        except RecursionError:
            parser = ijson.basic_parse_coro(_discard())
            parser.send(data)
            parser.close()


@contextmanager
def _spool_errors() -> Iterator[None]:
    """Translate a spool file's :class:`OSError` (:func:`local_error`: a full disk is transient)."""
    try:
        yield
    except OSError as exc:
        raise local_error(exc, "spool directory") from exc


@contextmanager
def _json_errors() -> Iterator[None]:
    try:
        yield
    except (ijson.JSONError, ValueError) as exc:
        raise PermanentError("result body is not JSON", reason=Reason.RESULT_NOT_JSON) from exc


@contextmanager
def _http_errors(url: str) -> Iterator[None]:
    """Translate httpx exceptions into the worker's tree (the one place they are caught)."""
    try:
        yield
    except httpx.TimeoutException as exc:
        raise TransientError(f"timeout fetching {url}", reason=Reason.RESULT_TIMEOUT) from exc
    except httpx.TransportError as exc:
        raise TransientError(f"network error fetching {url}", reason=Reason.RESULT_NETWORK) from exc
    except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
        raise PermanentError(f"not a valid URL: {url}", reason=Reason.URL_NOT_ALLOWED) from exc


class _Deadline:
    """The total deadline of one download (module docstring): ``timeout_s`` at least, else
    ``bytes / min_rate`` seconds; :meth:`check` raises :class:`TransientError` once passed."""

    def __init__(self, timeout_s: float, min_rate: int) -> None:
        self.timeout_s = timeout_s
        self.min_rate = min_rate
        self.started = time.monotonic()
        self.declared = 0

    def check(self, received: int, url: str) -> None:
        elapsed = time.monotonic() - self.started
        allowed = max(self.timeout_s, max(self.declared, received) / self.min_rate)
        if elapsed > allowed:
            raise TransientError(
                f"{received} bytes in {elapsed:.0f} s from {url}: under {self.min_rate} B/s",
                reason=Reason.RESULT_TIMEOUT,
            )


def _check_status(response: httpx.Response, url: str) -> None:
    status = response.status_code
    if status in (403, 404):
        raise ExpiredLinkError(f"{status} from {url}")
    if status == 429:
        raise TransientError(f"429 from {url}", reason=Reason.RESULT_HTTP_429)
    if status >= 500:
        raise TransientError(f"{status} from {url}", reason=Reason.RESULT_HTTP_5XX)
    if status >= 300:
        raise PermanentError(f"{status} from {url}", reason=Reason.RESULT_HTTP_4XX)


class ResultFetcher:
    """Fetch result bodies under the configured URL pattern, size cap and timeouts.

    ``spool_dir`` (None: the system temporary directory) receives one file per download of
    more than ``memory_bytes``, removed when the :meth:`download` block ends.
    """

    def __init__(
        self,
        url_pattern: re.Pattern[str],
        *,
        max_bytes: int,
        timeout_s: float = 60.0,
        spool_dir: str | None = None,
        min_bytes_per_second: int = 262_144,
        memory_bytes: int = MEMORY_BODY_BYTES,
    ) -> None:
        self.url_pattern = url_pattern
        self.memory_bytes = memory_bytes
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.timeout_s = timeout_s
        self.min_bytes_per_second = min_bytes_per_second
        # httpx logs every request line, query string included, at INFO: a signed URL in a
        # log is a leaked credential, so its logger only speaks from WARNING up.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))
        self._client = httpx.Client(timeout=timeout, follow_redirects=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ResultFetcher:
        """A fetcher for ``RESULT_URL_REGEX``, ``RESULT_MAX_BYTES``, ``RESULT_TIMEOUT_SECONDS``."""
        return cls(
            settings.result_url_pattern,
            max_bytes=settings.result_max_bytes,
            timeout_s=settings.result_timeout_seconds,
            spool_dir=settings.archive_spool_dir,
            min_bytes_per_second=settings.result_min_bytes_per_second,
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    @contextmanager
    def download(self, url: str) -> Iterator[FetchedBody]:
        """Stream ``url``, check it and yield it; a spool file is removed when the block ends.

        Raises the errors listed in the module docstring; nothing is yielded on error.
        """
        body = _Body(self.max_bytes, self.spool_dir, self.memory_bytes)
        try:
            self._stream(self._unexpired(url), body)
            yield body.finish()
        finally:
            body.discard()

    def _unexpired(self, url: str) -> str:
        """``url`` if allowed and its ``Expires`` (if any) is ahead; records the time left."""
        url = self._allowed(url)
        expires = link_expiry(url)
        if expires is not None:
            left = expires - time.time()
            metrics.link_lifetime_left(left)
            if left <= 0:
                raise ExpiredLinkError(f"{strip_query(url)} expired {-left:.0f} s ago")
        return url

    def _stream(self, url: str, body: _Body) -> None:
        target = url
        deadline = _Deadline(self.timeout_s, self.min_bytes_per_second)
        for _ in range(MAX_REDIRECTS + 1):
            with _http_errors(strip_query(target)), self._client.stream("GET", target) as answer:
                if answer.is_redirect:
                    target = self._redirect(target, answer)
                    continue
                _check_status(answer, strip_query(target))
                self._declared(answer, deadline)
                body.expect(deadline.declared)
                for chunk in answer.iter_bytes():  # as they arrive: the deadline is checked
                    body.feed(chunk)
                    deadline.check(body.size, strip_query(target))
                return
        raise PermanentError("too many redirects", reason=Reason.URL_NOT_ALLOWED)

    def _declared(self, answer: httpx.Response, deadline: _Deadline) -> None:
        declared = answer.headers.get("content-length", "")
        if not declared.isdigit():
            return
        if int(declared) > self.max_bytes:
            raise PermanentError(f"result of {declared} bytes", reason=Reason.RESULT_TOO_LARGE)
        deadline.declared = int(declared)

    def _allowed(self, url: str) -> str:
        if any(ord(char) < 0x20 or ord(char) == 0x7F for char in url):
            raise PermanentError(
                "result URL holds control characters", reason=Reason.URL_NOT_ALLOWED
            )
        if not self.url_pattern.fullmatch(url):
            raise PermanentError(
                f"result URL {strip_query(url)} outside RESULT_URL_REGEX",
                reason=Reason.URL_NOT_ALLOWED,
            )
        return url

    def _redirect(self, current: str, response: httpx.Response) -> str:
        location = response.headers.get("location", "")
        target = httpx.URL(current).join(location)
        origin = httpx.URL(current)
        if (target.scheme, target.host, target.port) != (origin.scheme, origin.host, origin.port):
            raise PermanentError(
                f"redirect to another host {target.host}", reason=Reason.URL_NOT_ALLOWED
            )
        return self._allowed(str(target))
