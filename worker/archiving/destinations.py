"""Archive destinations behind one small interface: local directory, S3, OSS.

``ARCHIVE_URLS`` (`docs/contract.md`, "Environment variables") lists ``file:///abs/path``
(or a plain directory path), ``s3://bucket/prefix`` (boto3; ``S3_ENDPOINT_URL`` and the standard
AWS variables) and ``oss://bucket/prefix`` (oss2; ``OSS_ENDPOINT``, ``OSS_ACCESS_KEY_ID``,
``OSS_ACCESS_KEY_SECRET``). Keys are relative to the prefix. Bodies of at least
``ARCHIVE_MULTIPART_BYTES`` go up as multipart uploads (boto3's transfer manager, oss2's
``resumable_upload``); smaller ones in one PUT.

Integrity: a result file's single PUT to S3 carries ``x-amz-checksum-sha256``, the digest the
fetcher computed while downloading it, so S3 refuses an object whose bytes changed on the way
(``BadDigest``: transient, the next attempt sends them again) and keeps the checksum; botocore
then skips its own CRC32 pass over the body. The client does not hash bodies into the request
signature (``payload_signing_enabled`` off: ``UNSIGNED-PAYLOAD``), so each byte is hashed once,
by the fetcher; other bodies (event, manifest, multipart parts) carry botocore's default CRC32.
(S3 "Checking object integrity": a full-object SHA-256 applies to single PUTs.)

Errors: library exceptions become :class:`TransientError` (``destination_unavailable``) for
network errors, timeouts, 429 and 5xx, else :class:`PermanentError` (``destination_rejected``).
Every :class:`OSError` of a local directory goes through :func:`local_error`: a full disk is
transient (``disk_full``), so is an I/O error or a stale network mount; read-only, permission
denied and not-a-directory are permanent.
"""

from __future__ import annotations

import base64
import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import oss2
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from core.errors import PermanentError, PipelineError, Reason, TransientError, http_error
from core.settings import Settings


class Destination(Protocol):
    """Where one archive copy goes. ``kind`` (``file``/``s3``/``oss``) labels metrics."""

    kind: str
    url: str

    def exists(self, key: str) -> bool:
        """True when an object ``key`` is stored."""

    def put_file(self, key: str, path: Path, size: int, sha256: str = "") -> None:
        """Store the ``size``-byte file at ``path`` under ``key``, replacing any object.

        ``sha256`` (hex, optional) is the file's digest, for stores that verify it.
        """

    def put_bytes(self, key: str, data: bytes, sha256: str = "") -> None:
        """Store ``data`` under ``key``, replacing any object; ``sha256`` as for put_file."""

    def get_bytes(self, key: str) -> bytes | None:
        """The object ``key``, or None when it does not exist."""


def _transient(exc: Exception) -> TransientError:
    return TransientError(f"destination unavailable: {exc}", reason=Reason.DESTINATION_UNAVAILABLE)


def _answered(status: int, exc: Exception) -> PipelineError:
    """The error for a destination's HTTP ``status`` (:func:`core.errors.http_error`)."""
    return http_error(
        status,
        f"destination answered {status}: {exc}",
        transient=Reason.DESTINATION_UNAVAILABLE,
        permanent=Reason.DESTINATION_REJECTED,
    )


class LocalDestination:
    """A directory; each object is written to a temporary name, then renamed (atomic)."""

    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    def exists(self, key: str) -> bool:
        try:
            return (self.root / key).is_file()
        except OSError as exc:
            raise local_error(exc, "archive directory") from exc

    def put_file(self, key: str, path: Path, size: int, sha256: str = "") -> None:
        with self._atomic(key) as handle, path.open("rb") as source:
            while chunk := source.read(1024 * 1024):
                handle.write(chunk)

    def put_bytes(self, key: str, data: bytes, sha256: str = "") -> None:
        with self._atomic(key) as handle:
            handle.write(data)

    def get_bytes(self, key: str) -> bytes | None:
        target = self.root / key
        try:
            return target.read_bytes() if target.is_file() else None
        except OSError as exc:
            raise local_error(exc, "archive directory") from exc

    @contextmanager
    def _atomic(self, key: str) -> Iterator[Any]:
        if key.startswith("/") or ".." in key.split("/"):  # ids are checked; this is a backstop
            raise PermanentError(f"key {key[:80]!r} leaves the root", reason=Reason.BAD_TASK_ID)
        target = self.root / key
        name = ""
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=target.parent, prefix=".part-")
            with os.fdopen(handle, "wb") as out:
                yield out
            os.replace(name, target)
        except OSError as exc:
            raise local_error(exc, "archive directory") from exc
        finally:
            if name:
                Path(name).unlink(missing_ok=True)


SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""No space left (or quota exceeded): transient, since freeing space cures it."""
PASSING_ERRNOS = frozenset({errno.EIO, errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.ESTALE})
"""I/O errors, timeouts and stale handles (network mounts): transient."""


def local_error(exc: OSError, what: str) -> PipelineError:
    """The error for a local file system failure on ``what`` (a directory's role).

    A full disk or quota is :class:`TransientError` (``disk_full``), an I/O error, timeout or
    stale handle :class:`TransientError` (``destination_unavailable``); anything else (read-only,
    permission denied, not a directory) is :class:`PermanentError` (``destination_rejected``).
    """
    message = f"{what}: {exc.strerror or exc}"
    if exc.errno in SPACE_ERRNOS:
        return TransientError(message, reason=Reason.DISK_FULL)
    if exc.errno in PASSING_ERRNOS:
        return TransientError(message, reason=Reason.DESTINATION_UNAVAILABLE)
    return PermanentError(message, reason=Reason.DESTINATION_REJECTED)


class S3Destination:
    """An S3 bucket and prefix through boto3."""

    kind = "s3"

    def __init__(self, client: Any, bucket: str, prefix: str, multipart_bytes: int) -> None:
        self._client = client
        self.bucket = bucket
        self.prefix = prefix
        self.url = f"s3://{bucket}/{prefix}"
        self._multipart_bytes = multipart_bytes
        self._transfer = TransferConfig(
            multipart_threshold=multipart_bytes, multipart_chunksize=multipart_bytes,
            max_concurrency=2, use_threads=True,
        )  # fmt: skip

    def exists(self, key: str) -> bool:
        with self._errors():
            try:
                self._client.head_object(Bucket=self.bucket, Key=self.prefix + key)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    return False
                raise
        return True

    def put_file(self, key: str, path: Path, size: int, sha256: str = "") -> None:
        with self._errors():
            if size >= self._multipart_bytes:
                self._client.upload_file(
                    str(path), self.bucket, self.prefix + key, Config=self._transfer
                )
                return
            with path.open("rb") as body:
                self._put(key, body, sha256)

    def put_bytes(self, key: str, data: bytes, sha256: str = "") -> None:
        with self._errors():
            self._put(key, data, sha256)

    def _put(self, key: str, body: Any, sha256: str) -> None:
        checksum = {"ChecksumSHA256": _base64_digest(sha256)} if sha256 else {}
        self._client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, **checksum)

    def get_bytes(self, key: str) -> bytes | None:
        with self._errors():
            try:
                answer = self._client.get_object(Bucket=self.bucket, Key=self.prefix + key)
            except self._client.exceptions.NoSuchKey:
                return None
            return bytes(answer["Body"].read())

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "BadDigest":
                raise _transient(exc) from exc  # bytes changed on the way: send them again
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise _answered(status, exc) from exc
        except (botocore.exceptions.BotoCoreError, S3UploadFailedError) as exc:
            raise _transient(exc) from exc


class OssDestination:
    """An OSS bucket and prefix through oss2."""

    kind = "oss"

    def __init__(self, bucket: oss2.Bucket, prefix: str, multipart_bytes: int, spool: str) -> None:
        self._bucket = bucket
        self.prefix = prefix
        self.url = f"oss://{bucket.bucket_name}/{prefix}"
        self._multipart_bytes = multipart_bytes
        self._store = oss2.ResumableStore(root=spool, dir=".oss-checkpoints")

    def exists(self, key: str) -> bool:
        with self._errors():
            return bool(self._bucket.object_exists(self.prefix + key))

    def put_file(self, key: str, path: Path, size: int, sha256: str = "") -> None:
        with self._errors():
            oss2.resumable_upload(
                self._bucket, self.prefix + key, str(path), store=self._store,
                multipart_threshold=self._multipart_bytes, part_size=self._multipart_bytes,
                num_threads=2,
            )  # fmt: skip

    def put_bytes(self, key: str, data: bytes, sha256: str = "") -> None:
        with self._errors():
            self._bucket.put_object(self.prefix + key, data)

    def get_bytes(self, key: str) -> bytes | None:
        with self._errors():
            try:
                return bytes(self._bucket.get_object(self.prefix + key).read())
            except oss2.exceptions.NoSuchKey:
                return None

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except oss2.exceptions.OssError as exc:
            raise _answered(int(exc.status), exc) from exc


def _base64_digest(sha256: str) -> str:
    """S3's form of a checksum: the Base64 of the digest's bytes (``sha256`` is hex)."""
    return base64.b64encode(bytes.fromhex(sha256)).decode("ascii")


def _prefix(path: str) -> str:
    path = path.strip("/")
    return path + "/" if path else ""


def open_destination(url: str, settings: Settings) -> Destination:
    """The destination named by one ``ARCHIVE_URLS`` entry.

    Raises :class:`PermanentError` (``bad_destination``) for an unknown scheme or missing
    OSS settings.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        return LocalDestination(Path(parts.path if parts.scheme else url).resolve())
    if parts.scheme == "s3":
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, config=_S3_CONFIG)
        return S3Destination(client, parts.netloc, _prefix(parts.path), _multipart(settings))
    if parts.scheme == "oss":
        bucket = _oss_bucket(parts.netloc, settings)
        spool = settings.archive_spool_dir or tempfile.gettempdir()
        return OssDestination(bucket, _prefix(parts.path), _multipart(settings), spool)
    raise PermanentError(f"unknown archive scheme {parts.scheme!r}", reason=Reason.BAD_DESTINATION)


_S3_CONFIG = Config(s3={"payload_signing_enabled": False})
"""Checksums, not the signature, carry the body's integrity (module docstring)."""


def _multipart(settings: Settings) -> int:
    return settings.archive_multipart_bytes


def _oss_bucket(name: str, settings: Settings) -> oss2.Bucket:
    secret = settings.oss_access_key_secret
    if not (settings.oss_endpoint and settings.oss_access_key_id and secret):
        raise PermanentError(
            "oss:// destination without OSS_* settings", reason=Reason.BAD_DESTINATION
        )
    auth = oss2.Auth(settings.oss_access_key_id, secret.get_secret_value())
    return oss2.Bucket(auth, settings.oss_endpoint, name)


def open_destinations(settings: Settings) -> list[Destination]:
    """Every destination of ``ARCHIVE_URLS``, in order."""
    return [open_destination(url, settings) for url in settings.archive_urls]
