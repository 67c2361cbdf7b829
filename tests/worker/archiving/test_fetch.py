"""Streaming result downloads: URL pattern, redirects, size cap, JSON check, error mapping."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

import pytest

from core.errors import ExpiredLinkError, PermanentError, PipelineError, TransientError
from tests.support import task_events as te
from tests.support.result_server import Fault, ResultServer
from worker.archiving.fetch import MEMORY_BODY_BYTES, ResultFetcher


def fetcher(server: ResultServer, tmp_path: Path, **kwargs: object) -> ResultFetcher:
    """A fetcher allowed to read ``server`` only, spooling under ``tmp_path`` past 1 MiB."""
    options: dict = {"max_bytes": 10_000_000, "timeout_s": 2.0, "spool_dir": str(tmp_path)}
    options["memory_bytes"] = 1024 * 1024
    options.update(kwargs)
    return ResultFetcher(re.compile(server.url_regex), **options)


def test_download_counts_hashes_and_spools(result_server: ResultServer, tmp_path: Path) -> None:
    """A large body arrives byte for byte with size and sha256; its spool file goes after."""
    body = te.result_file(words=40_000)
    url = result_server.add("/r/0.json", body)
    with fetcher(result_server, tmp_path).download(url) as got:
        assert got.read() == body and got.path is not None
        assert (got.size, got.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        spooled = got.path
    assert not spooled.exists()


def test_url_outside_pattern_is_refused(result_server: ResultServer, tmp_path: Path) -> None:
    """A URL that RESULT_URL_REGEX does not fully match is never requested."""
    result_server.add("/r/0.json", b"{}")
    with (
        pytest.raises(PermanentError) as info,
        fetcher(result_server, tmp_path).download("http://localhost:1/r/0.json"),
    ):
        pass
    assert info.value.reason == "url_not_allowed"
    assert result_server.hits("/r/0.json") == 0


def test_redirect_to_other_host_is_refused(result_server: ResultServer, tmp_path: Path) -> None:
    """A redirect to another host is not followed."""
    url = result_server.add(
        "/r/0.json", b"{}", faults=[Fault(status=302, location="http://127.0.0.2/x")]
    )
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert info.value.reason == "url_not_allowed"


def test_same_host_redirect_is_followed(result_server: ResultServer, tmp_path: Path) -> None:
    """A redirect on the same host to an allowed URL is followed."""
    result_server.add("/r/new.json", b'{"ok": true}')
    url = result_server.add("/r/0.json", b"{}", faults=[Fault(status=302, location="/r/new.json")])
    with fetcher(result_server, tmp_path).download(url) as got:
        assert got.read() == b'{"ok": true}'


@pytest.mark.parametrize(
    ("fault", "error", "reason"),
    [
        (Fault(status=503), TransientError, "result_http_5xx"),
        (Fault(status=429), TransientError, "result_http_429"),
        (Fault(status=403), ExpiredLinkError, "expired_link"),
        (Fault(status=404), ExpiredLinkError, "expired_link"),
        (Fault(status=400), PermanentError, "result_http_4xx"),
        (Fault(truncate_at=100), TransientError, "result_network"),
        (Fault(claim_bytes=50_000_000), PermanentError, "result_too_large"),
    ],
)
def test_faults_map_to_worker_errors(
    result_server: ResultServer, tmp_path: Path, fault: Fault, error: type, reason: str
) -> None:
    """Each injected fault raises the documented error class and reason."""
    url = result_server.add("/r/0.json", te.result_file(words=500), faults=[fault])
    with pytest.raises(error) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert type(info.value) is error and info.value.reason == reason
    assert "Signature" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_slow_body_times_out(result_server: ResultServer, tmp_path: Path) -> None:
    """A body slower than the read timeout fails as a transient result_timeout."""
    url = result_server.add("/r/0.json", te.result_file(words=2000), chunk_delay_s=0.6)
    with (
        pytest.raises(TransientError) as info,
        fetcher(result_server, tmp_path, timeout_s=0.3).download(url),
    ):
        pass
    assert info.value.reason == "result_timeout"


def test_streamed_size_cap(result_server: ResultServer, tmp_path: Path) -> None:
    """A body longer than RESULT_MAX_BYTES fails while streaming, whatever it announced."""
    url = result_server.add("/r/0.json", te.result_file(words=5000))
    with (
        pytest.raises(PermanentError) as info,
        fetcher(result_server, tmp_path, max_bytes=10_000).download(url),
    ):
        pass
    assert info.value.reason == "result_too_large"


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"a": [1, 2', b'{"a": 1} trailing', b""])
def test_non_json_body_is_permanent(
    result_server: ResultServer, tmp_path: Path, body: bytes
) -> None:
    """A complete body that is not one JSON document fails as result_not_json."""
    url = result_server.add("/r/0.json", body)
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert info.value.reason == "result_not_json"


def test_large_body_checked_by_streaming_parser(
    result_server: ResultServer, tmp_path: Path
) -> None:
    """Bodies over 1 MiB are validated by the streaming parser: valid passes, cut-off fails."""
    body = te.result_file(words=40_000)
    assert len(body) > 2 * 1024 * 1024
    good = result_server.add("/r/good.json", body)
    bad = result_server.add("/r/bad.json", body[:-10])
    with fetcher(result_server, tmp_path).download(good) as got:
        assert got.size == len(body)
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(bad):
        pass
    assert info.value.reason == "result_not_json"


def test_non_standard_constants_are_not_json(result_server: ResultServer, tmp_path: Path) -> None:
    """NaN and Infinity (accepted by Python's json) are refused like any non-JSON body."""
    url = result_server.add("/r/nan.json", b'{"a": NaN}')
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert info.value.reason == "result_not_json"


def test_small_body_stays_in_memory(result_server: ResultServer, tmp_path: Path) -> None:
    """A body up to 1 MiB is kept in memory: no spool file is created."""
    body = te.result_file(words=100)
    url = result_server.add("/r/small.json", body)
    with fetcher(result_server, tmp_path).download(url) as got:
        assert (got.data, got.path) == (body, None)
        assert list(tmp_path.iterdir()) == []


def test_body_under_the_default_memory_limit_is_checked_in_memory(
    result_server: ResultServer, tmp_path: Path
) -> None:
    """A 3 MB body stays in memory under the default limit: valid passes, cut-off fails."""
    body = te.result_file(words=40_000)
    assert 2 * 1024 * 1024 < len(body) < MEMORY_BODY_BYTES
    default = fetcher(result_server, tmp_path, memory_bytes=MEMORY_BODY_BYTES)
    with default.download(result_server.add("/r/mem.json", body)) as got:
        assert (got.data, got.path, got.size) == (body, None, len(body))
        assert got.sha256 == hashlib.sha256(body).hexdigest()
        assert list(tmp_path.iterdir()) == []
    url = result_server.add("/r/mem-bad.json", body[:-10])
    with pytest.raises(PermanentError) as info, default.download(url):
        pass
    assert info.value.reason == "result_not_json"


def test_big_integers_are_json(result_server: ResultServer, tmp_path: Path) -> None:
    """A 5000-digit integer is valid JSON (past Python's int-string limit): archived."""
    body = b'{"n": ' + b"7" * 5000 + b"}"
    with fetcher(result_server, tmp_path).download(result_server.add("/r/big.json", body)) as got:
        assert got.read() == body


def test_deep_nesting_is_json(result_server: ResultServer, tmp_path: Path) -> None:
    """A document too deep for json.loads is checked by ijson instead: archived as served."""
    body = b"[" * 100_000 + b"]" * 100_000
    with fetcher(result_server, tmp_path).download(result_server.add("/r/deep.json", body)) as got:
        assert got.read() == body
    broken = b"[" * 100_000 + b"]" * 99_999
    url = result_server.add("/r/deep-broken.json", broken)
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert info.value.reason == "result_not_json"


@pytest.mark.parametrize("char", ["\x01", "\x7f", "\n"])
def test_control_character_in_a_link_is_not_allowed(
    result_server: ResultServer, tmp_path: Path, char: str
) -> None:
    """A link holding a control character is ``url_not_allowed`` and never requested."""
    url = result_server.add("/r/c.json", b"{}").replace("/r/c.json", f"/r/c{char}.json")
    with pytest.raises(PermanentError) as info, fetcher(result_server, tmp_path).download(url):
        pass
    assert info.value.reason == "url_not_allowed"


def test_total_deadline_ends_a_dribbling_download(
    result_server: ResultServer, tmp_path: Path
) -> None:
    """Every read arrives within the read timeout, but the whole download is slower than the
    minimum rate: it ends after about the timeout with ``result_timeout`` (transient)."""
    url = result_server.add("/r/drip.json", te.result_file(words=3000), chunk_delay_s=0.4)
    slow = fetcher(result_server, tmp_path, timeout_s=1.0, min_bytes_per_second=1_000_000)
    started = time.monotonic()
    with pytest.raises(TransientError) as info, slow.download(url):
        pass
    assert info.value.reason == "result_timeout"
    assert time.monotonic() - started < 2.0  # 1 s deadline plus one 0.4 s chunk


def test_expired_link_is_not_requested(result_server: ResultServer, tmp_path: Path) -> None:
    """A link whose ``Expires`` passed raises ExpiredLinkError without a request."""
    url = result_server.add("/r/old.json", b"{}", expires_in_s=-1)
    with pytest.raises(ExpiredLinkError), fetcher(result_server, tmp_path).download(url):
        pass
    assert result_server.hits("/r/old.json") == 0


def test_spool_without_space_is_disk_full(
    result_server: ResultServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC on the spool file is transient ``disk_full``; a read-only spool is permanent."""
    url = result_server.add("/r/big.json", te.result_file(words=40_000))
    for code, reason in ((errno.ENOSPC, "disk_full"), (errno.EROFS, "destination_rejected")):

        def refuse(*args: object, code: int = code, **kwargs: object) -> None:
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(PipelineError) as info, fetcher(result_server, tmp_path).download(url):
            pass
        assert info.value.reason == reason
