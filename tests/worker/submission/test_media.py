"""Walking and validating local media; upload, skip and signing against moto as OSS."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import oss2
import pytest

from core.errors import PermanentError
from core.settings import load_settings
from tests.fixtures.objectstore import MotoProxy
from worker.submission.media import (
    MAX_MEDIA_BYTES,
    MediaBucket,
    key_in_url,
    parse_media_url,
    sha256_of,
    walk,
)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_walk_accepts_media_and_rejects_with_reasons(tmp_path: Path) -> None:
    """Directories expand recursively; bad extension, empty, >2 GB and missing are refused."""
    good = _write(tmp_path / "in" / "a.WAV", b"RIFF")
    nested = _write(tmp_path / "in" / "sub" / "b.mp3", b"ID3")
    _write(tmp_path / "in" / ".hidden.wav", b"x")
    text = _write(tmp_path / "in" / "notes.txt", b"hello")
    empty = _write(tmp_path / "in" / "empty.flac", b"")
    huge = tmp_path / "in" / "huge.mp4"
    with huge.open("wb") as handle:
        handle.truncate(MAX_MEDIA_BYTES + 1)  # sparse: no disk used
    missing = tmp_path / "nope.wav"
    accepted, rejected = walk([tmp_path / "in", missing, good])
    assert [(m.path, m.size) for m in accepted] == [(str(good), 4), (str(nested), 3)]
    reasons = {r.path: r.reason for r in rejected}
    assert reasons == {
        str(text): "unsupported_format",
        str(empty): "empty_file",
        str(huge): "too_large",
        str(missing): "not_found",
    }


def test_sha256_and_parse_media_url(tmp_path: Path) -> None:
    """Content hashes match hashlib; MEDIA_URL must be oss://bucket/prefix."""
    path = _write(tmp_path / "x.wav", b"abc" * 1000)
    assert sha256_of(str(path), chunk_bytes=7) == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert parse_media_url("oss://media/in/coming/") == ("media", "in/coming")
    assert parse_media_url("oss://media") == ("media", "")
    with pytest.raises(PermanentError):
        parse_media_url("s3://media/x")


def test_upload_then_skip_and_sign_url_that_downloads(
    tmp_path: Path, moto_proxy: MotoProxy, s3_bucket: str
) -> None:
    """The first upload PUTs, the second finds the object and sends nothing; the URL serves it."""
    bucket = oss2.Bucket(oss2.Auth("testing", "testing"), moto_proxy.url, s3_bucket)
    media = MediaBucket(bucket, "media/", expires_s=3600)
    path = _write(tmp_path / "talk.Mp3", b"ID3" + b"\x01" * 5000)
    sha = sha256_of(str(path))
    key = media.object_key(sha, str(path))
    assert key == f"media/{sha}.mp3"
    assert media.upload(str(path), key, 5003) is True
    puts = moto_proxy.count("PUT")
    assert media.upload(str(path), key, 5003) is False
    assert moto_proxy.count("PUT") == puts == 1
    url = media.sign(key)
    assert "Signature=" in url and "Expires=" in url
    assert httpx.get(url).content == path.read_bytes()
    assert key_in_url(url, ["media/other.wav", key]) == key


def test_large_file_goes_multipart_with_checkpoints(
    tmp_path: Path, moto_proxy: MotoProxy, s3_bucket: str
) -> None:
    """A file over the threshold is sent by resumable multipart upload and arrives intact."""
    bucket = oss2.Bucket(oss2.Auth("testing", "testing"), moto_proxy.url, s3_bucket)
    checkpoints = tmp_path / "checkpoints"
    media = MediaBucket(bucket, "", checkpoint_dir=str(checkpoints), multipart_threshold=200 * 1024)
    data = bytes(range(256)) * 1200  # 300 KB
    path = _write(tmp_path / "big.wav", data)
    key = media.object_key(sha256_of(str(path)), str(path))
    assert media.upload(str(path), key, len(data)) is True
    assert any("uploads" in p for m, p, _ in moto_proxy.requests if m == "POST")
    assert bucket.get_object(key).read() == data
    assert checkpoints.is_dir()


def test_from_settings_signs_on_the_public_endpoint(moto_endpoint: str, s3_bucket: str) -> None:
    """URLs are signed for OSS_PUBLIC_ENDPOINT (virtual-host style for a host name)."""
    settings = load_settings(
        media_url=f"oss://{s3_bucket}/m",
        oss_endpoint=moto_endpoint,
        oss_public_endpoint="http://public.example:8080",
        oss_access_key_id="testing",
        oss_access_key_secret="testing",
    )
    media = MediaBucket.from_settings(settings)
    assert media.sign("m/x.wav").startswith(f"http://{s3_bucket}.public.example:8080/m/x.wav?")
    with pytest.raises(PermanentError):
        MediaBucket.from_settings(load_settings(media_url=None))


def test_upload_errors_are_translated(tmp_path: Path, moto_endpoint: str) -> None:
    """An upload to a bucket that does not exist is a PermanentError (media_rejected)."""
    bucket = oss2.Bucket(oss2.Auth("testing", "testing"), moto_endpoint, "no-such-bucket-x")
    path = _write(tmp_path / "a.wav", b"RIFF....")
    with pytest.raises(PermanentError) as caught:
        MediaBucket(bucket, "").upload(str(path), "a.wav", 8)
    assert caught.value.reason == "media_rejected"
