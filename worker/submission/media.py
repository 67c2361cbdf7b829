"""Local media in, signed public URLs out: walk, validate, hash, upload to ``MEDIA_URL``, sign.

Limits from `docs/dashscope-transcription.md` ("Submitting a task", "Hosting media for
submission"): 17 formats, at most 2 GB per file, only public HTTP(S) URLs; upload to our own
OSS bucket and pass a GET URL signed on the bucket's **public** endpoint
(``OSS_PUBLIC_ENDPOINT``, else ``OSS_ENDPOINT``), valid ``MEDIA_URL_EXPIRES_SECONDS``; large
files go through ``oss2.resumable_upload`` with a checkpoint directory.

Object keys are ``<prefix>/<sha256 of the content><lower-case extension>``: the same bytes map
to the same key, so a second run finds the object (HEAD) and uploads nothing.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import oss2
import tenacity

from core.errors import PermanentError, Reason, TransientError, http_error
from core.settings import Settings

SUPPORTED_FORMATS = frozenset(
    {"aac", "amr", "avi", "flac", "flv", "m4a", "mkv", "mov", "mp3", "mp4", "mpeg", "ogg"}
    | {"opus", "wav", "webm", "wma", "wmv"}
)
MAX_MEDIA_BYTES = 2 * 1024**3
"""2 GB, DashScope's per-file limit."""
UPLOAD_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class LocalMedia:
    """An accepted file: absolute ``path`` and ``size`` in bytes."""

    path: str
    size: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A refused path and why.

    ``reason``: ``not_found``, ``unsupported_format``, ``empty_file`` or ``too_large``.
    """

    path: str
    reason: str


def check_file(path: Path) -> LocalMedia | Rejection:
    """Validate one regular file against the format and size limits."""
    absolute = str(path.resolve())
    if path.suffix.lower().lstrip(".") not in SUPPORTED_FORMATS:
        return Rejection(absolute, "unsupported_format")
    size = path.stat().st_size
    if size == 0:
        return Rejection(absolute, "empty_file")
    if size > MAX_MEDIA_BYTES:
        return Rejection(absolute, "too_large")
    return LocalMedia(absolute, size)


def walk(paths: Iterable[str | Path]) -> tuple[list[LocalMedia], list[Rejection]]:
    """Expand files and directories (recursively, sorted) into accepted and rejected files.

    Hidden files (names starting with ``.``) inside directories are skipped; a path named
    explicitly is always checked. Each absolute path appears once.
    """
    accepted: dict[str, LocalMedia] = {}
    rejected: dict[str, Rejection] = {}
    for candidate in _expand(paths):
        if not candidate.is_file():
            rejected[str(candidate.absolute())] = Rejection(str(candidate.absolute()), "not_found")
            continue
        outcome = check_file(candidate)
        target = accepted if isinstance(outcome, LocalMedia) else rejected
        target[outcome.path] = outcome  # type: ignore[assignment]  # matched by isinstance above
    return list(accepted.values()), list(rejected.values())


def _expand(paths: Iterable[str | Path]) -> Iterable[Path]:
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            yield path
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            yield from (Path(root) / f for f in sorted(files) if not f.startswith("."))


def sha256_of(path: str, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's content, read in ``chunk_bytes`` pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def parse_media_url(media_url: str) -> tuple[str, str]:
    """``oss://bucket/prefix`` → ``(bucket, prefix)`` (prefix without slashes at either end).

    Raises :class:`PermanentError` (``bad_media_url``) for anything else.
    """
    parts = urlsplit(media_url)
    if parts.scheme != "oss" or not parts.netloc:
        raise PermanentError(
            f"MEDIA_URL must be oss://bucket/prefix, got {media_url!r}", reason=Reason.BAD_MEDIA_URL
        )
    return parts.netloc, parts.path.strip("/")


def key_in_url(url: str, keys: Iterable[str]) -> str | None:
    """The object key among ``keys`` that the (signed) media ``url`` points at, if any."""
    path = unquote(urlsplit(url).path)
    return next((key for key in keys if path.endswith("/" + key)), None)


class MediaBucket:
    """Upload media to one OSS bucket under a prefix and sign GET URLs for it.

    ``bucket`` talks to ``OSS_ENDPOINT``; ``public`` (default: the same) signs URLs for the
    public endpoint. Files of ``multipart_threshold`` bytes or more use resumable multipart
    upload with checkpoints under ``checkpoint_dir``. oss2 errors become
    :class:`TransientError` (network, 429, 5xx) or :class:`PermanentError` (other 4xx).
    """

    def __init__(
        self,
        bucket: oss2.Bucket,
        prefix: str,
        *,
        public: oss2.Bucket | None = None,
        expires_s: int = 172_800,
        checkpoint_dir: str | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
    ) -> None:
        self._bucket = bucket
        self._public = public or bucket
        self._prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._expires_s = expires_s
        self._checkpoint_dir = checkpoint_dir
        self._threshold = multipart_threshold

    @classmethod
    def from_settings(cls, settings: Settings) -> MediaBucket:
        """The bucket of ``MEDIA_URL`` with the ``OSS_*`` credentials and endpoints.

        Raises :class:`PermanentError` (``bad_media_url``) when MEDIA_URL or OSS is not set.
        """
        if not settings.media_url or not settings.oss_endpoint:
            raise PermanentError(
                "MEDIA_URL and OSS_ENDPOINT must be set", reason=Reason.BAD_MEDIA_URL
            )
        name, prefix = parse_media_url(settings.media_url)
        secret = settings.oss_access_key_secret
        auth = oss2.Auth(
            settings.oss_access_key_id or "", secret.get_secret_value() if secret else ""
        )
        public = settings.oss_public_endpoint or settings.oss_endpoint
        return cls(
            oss2.Bucket(auth, settings.oss_endpoint, name),
            prefix,
            public=oss2.Bucket(auth, public, name),
            expires_s=settings.media_url_expires_seconds,
            checkpoint_dir=settings.media_checkpoint_dir,
            multipart_threshold=settings.media_multipart_threshold_bytes,
        )

    def object_key(self, sha256: str, path: str) -> str:
        """``<prefix>/<sha256><ext>`` for a file of content hash ``sha256``."""
        return f"{self._prefix}{sha256}{Path(path).suffix.lower()}"

    def upload(self, path: str, key: str, size: int) -> bool:
        """Upload ``path`` (``size`` bytes) to ``key`` unless it is there; True when sent.

        Transient failures are retried :data:`UPLOAD_ATTEMPTS` times in all with short
        exponential backoff and jitter before :class:`TransientError` reaches the caller.
        """
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(UPLOAD_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=0.2, max=2.0) + tenacity.wait_random(0, 0.2),
            reraise=True,
        )
        sent: bool = retrying(self._upload_once, path, key, size)
        return sent

    def _upload_once(self, path: str, key: str, size: int) -> bool:
        try:
            if self._exists(key):
                return False
            if size >= self._threshold:
                store = (
                    oss2.ResumableStore(root=self._checkpoint_dir) if self._checkpoint_dir else None
                )
                oss2.resumable_upload(
                    self._bucket, key, path, store=store, multipart_threshold=self._threshold
                )
            else:
                self._bucket.put_object_from_file(key, path)
        except oss2.exceptions.OssError as exc:
            raise _translate(exc, "upload") from exc
        return True

    def sign(self, key: str) -> str:
        """A GET URL for ``key`` on the public endpoint, valid ``expires_s`` seconds."""
        url: str = self._public.sign_url("GET", key, self._expires_s, slash_safe=True)
        return url

    def _exists(self, key: str) -> bool:
        # The key names the content's sha256, and PUT and multipart completion are atomic,
        # so an object under the key is this content.
        try:
            self._bucket.head_object(key)
        except oss2.exceptions.NotFound:
            return False
        return True


def _translate(exc: oss2.exceptions.OssError, action: str) -> Exception:
    status = int(exc.status)
    message = f"media {action} failed: {status} {getattr(exc, 'code', '')}"
    return http_error(
        status, message, transient=Reason.MEDIA_UNAVAILABLE, permanent=Reason.MEDIA_REJECTED
    )
