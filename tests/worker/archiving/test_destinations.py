"""Destinations: local directory, S3 (moto) and OSS (moto through oss2), single and multipart."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import oss2
import pytest

from core.errors import PermanentError, TransientError
from core.settings import load_settings
from tests.fixtures.objectstore import MotoProxy
from worker.archiving.destinations import open_destination, open_destinations

MIB = 1024 * 1024


def big_file(tmp_path: Path, size: int) -> Path:
    """A file of ``size`` random bytes."""
    path = tmp_path / "body.json"
    path.write_bytes(os.urandom(size))
    return path


def test_local_directory_roundtrip(tmp_path: Path) -> None:
    """file:// writes whole objects under the directory and reads them back."""
    dest = open_destination((tmp_path / "arch").as_uri(), load_settings())
    source = big_file(tmp_path, 3000)
    assert not dest.exists("t/results/0000.json")
    dest.put_file("t/results/0000.json", source, 3000)
    dest.put_bytes("t/manifest.json", b"{}")
    assert dest.exists("t/results/0000.json")
    assert (tmp_path / "arch/t/results/0000.json").read_bytes() == source.read_bytes()
    assert dest.get_bytes("t/manifest.json") == b"{}" and dest.get_bytes("nope") is None
    assert not [p for p in (tmp_path / "arch/t").rglob(".part-*")]


def test_plain_path_is_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheme-less ARCHIVE_URLS entry (the default ./archive) is a local directory."""
    monkeypatch.chdir(tmp_path)
    (dest,) = open_destinations(load_settings(archive_urls=["./archive"]))
    dest.put_bytes("x.json", b"1")
    assert (tmp_path / "archive/x.json").read_bytes() == b"1"


def test_s3_single_put(moto_endpoint: str, s3_client: Any, s3_bucket: str, tmp_path: Path) -> None:
    """s3://bucket/prefix stores keys under the prefix."""
    settings = load_settings(s3_endpoint_url=moto_endpoint)
    dest = open_destination(f"s3://{s3_bucket}/arch/v1", settings)
    dest.put_file("t/results/0000.json", big_file(tmp_path, 1000), 1000)
    dest.put_bytes("t/manifest.json", b"{}")
    keys = sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"])
    assert keys == ["arch/v1/t/manifest.json", "arch/v1/t/results/0000.json"]
    assert dest.exists("t/manifest.json") and not dest.exists("t/other.json")
    assert dest.get_bytes("t/manifest.json") == b"{}" and dest.get_bytes("nope") is None


def test_s3_large_body_is_multipart(
    moto_proxy: MotoProxy, s3_client: Any, s3_bucket: str, tmp_path: Path, aws_env: None
) -> None:
    """A body over ARCHIVE_MULTIPART_BYTES goes up in parts and arrives whole."""
    settings = load_settings(s3_endpoint_url=moto_proxy.url, archive_multipart_bytes=5 * MIB)
    dest = open_destination(f"s3://{s3_bucket}/p", settings)
    source = big_file(tmp_path, 11 * MIB)
    dest.put_file("t/results/0000.json", source, 11 * MIB)
    body = s3_client.get_object(Bucket=s3_bucket, Key="p/t/results/0000.json")["Body"].read()
    assert body == source.read_bytes()
    assert moto_proxy.count("POST", f"/{s3_bucket}/p/t/results/0000.json?uploads") == 1
    assert sum(1 for m, p, _ in moto_proxy.requests if m == "PUT" and "partNumber=" in p) == 3


def test_s3_missing_bucket_is_permanent(moto_endpoint: str, aws_env: None, tmp_path: Path) -> None:
    """A write to a bucket that does not exist is rejected permanently."""
    dest = open_destination("s3://no-such-bucket-x/p", load_settings(s3_endpoint_url=moto_endpoint))
    with pytest.raises(PermanentError) as info:
        dest.put_bytes("k", b"1")
    assert info.value.reason == "destination_rejected"


def test_s3_unreachable_is_transient(aws_env: None) -> None:
    """A destination that does not answer is a transient failure."""
    settings = load_settings(s3_endpoint_url="http://127.0.0.1:9")
    dest = open_destination("s3://bucket/p", settings)
    with pytest.raises(TransientError) as info:
        dest.exists("k")
    assert info.value.reason == "destination_unavailable"


def oss_settings(endpoint: str, **extra: Any) -> Any:
    """Settings for an OSS endpoint on moto."""
    return load_settings(
        oss_endpoint=endpoint, oss_access_key_id="testing", oss_access_key_secret="testing", **extra
    )


def test_oss_single_put(moto_endpoint: str, oss_bucket: oss2.Bucket, tmp_path: Path) -> None:
    """oss://bucket/prefix stores keys under the prefix through oss2."""
    dest = open_destination(f"oss://{oss_bucket.bucket_name}/arch", oss_settings(moto_endpoint))
    dest.put_file("t/results/0000.json", big_file(tmp_path, 2000), 2000)
    dest.put_bytes("t/manifest.json", b'{"a": 1}')
    assert oss_bucket.get_object("arch/t/manifest.json").read() == b'{"a": 1}'
    assert dest.exists("t/results/0000.json") and not dest.exists("t/nope")
    assert dest.get_bytes("t/manifest.json") == b'{"a": 1}' and dest.get_bytes("nope") is None


def test_oss_large_body_is_multipart(
    oss_multipart_endpoint: str, moto_proxy: MotoProxy, oss_bucket: oss2.Bucket, tmp_path: Path
) -> None:
    """oss2's resumable (multipart) upload works through the namespace-stripping proxy."""
    settings = oss_settings(
        oss_multipart_endpoint, archive_multipart_bytes=5 * MIB, archive_spool_dir=str(tmp_path)
    )
    dest = open_destination(f"oss://{oss_bucket.bucket_name}/arch", settings)
    source = big_file(tmp_path, 11 * MIB)
    dest.put_file("t/results/0000.json", source, 11 * MIB)
    assert oss_bucket.get_object("arch/t/results/0000.json").read() == source.read_bytes()
    assert sum(1 for m, p, _ in moto_proxy.requests if m == "PUT" and "partNumber=" in p) == 3


def test_oss_without_settings_is_refused() -> None:
    """oss:// without OSS_ENDPOINT and keys is a configuration error."""
    with pytest.raises(PermanentError) as info:
        open_destination("oss://bucket/p", load_settings(oss_endpoint=None))
    assert info.value.reason == "bad_destination"


def test_unknown_scheme_is_refused() -> None:
    """Only file, s3 and oss destinations exist."""
    with pytest.raises(PermanentError, match="ftp"):
        open_destination("ftp://host/p", load_settings())


def test_s3_put_carries_the_digest_and_a_mismatch_is_retried(
    moto_proxy: MotoProxy, s3_client: Any, s3_bucket: str, aws_env: None
) -> None:
    """A result's single PUT sends its sha256 for S3 to verify; a mismatch (BadDigest) is
    transient, so the next attempt sends the bytes again."""
    dest = open_destination(f"s3://{s3_bucket}/p", load_settings(s3_endpoint_url=moto_proxy.url))
    body = b'{"text": "hello"}'
    digest = hashlib.sha256(body).hexdigest()
    dest.put_bytes("t/results/0000.json", body, digest)
    stored = s3_client.get_object(Bucket=s3_bucket, Key="p/t/results/0000.json")["Body"].read()
    assert stored == body
    assert moto_proxy.checksums == [
        (f"/{s3_bucket}/p/t/results/0000.json", base64.b64encode(bytes.fromhex(digest)).decode())
    ]
    with pytest.raises(TransientError) as info:
        dest.put_bytes("t/results/0001.json", body, hashlib.sha256(b"other").hexdigest())
    assert info.value.reason == "destination_unavailable"
    assert "p/t/results/0001.json" not in str(s3_client.list_objects_v2(Bucket=s3_bucket))
