"""Signed query strings inside result bodies are removed, whatever the chunking."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from worker.archiving.scrub import StreamScrubber, scrub

SIGNED = "https://b.oss-cn-beijing.aliyuncs.com/m/a.wav?Expires=1700000000&OSSAccessKeyId=AK&Signature=x%2By"
BODY = json.dumps(
    {"file_url": SIGNED, "other": "https://example.com/p?page=2", "text": "a ? b"}
).encode()


def test_signed_query_removed_other_queries_kept() -> None:
    """Only URLs whose query carries a signing parameter lose it."""
    out = json.loads(scrub(BODY))
    assert out["file_url"] == "https://b.oss-cn-beijing.aliyuncs.com/m/a.wav"
    assert out["other"] == "https://example.com/p?page=2"
    assert out["text"] == "a ? b"


def test_escaped_slashes_and_s3_style() -> None:
    """JSON-escaped slashes and X-Amz-* parameters are recognised too."""
    body = b'{"u": "https:\\/\\/h\\/k?X-Amz-Signature=abc&X-Amz-Date=1"}'
    assert scrub(body) == b'{"u": "https:\\/\\/h\\/k"}'


def test_clean_body_is_unchanged() -> None:
    """A body without signed URLs comes out byte for byte and is not marked changed."""
    body = b'{"file_url": "https://b/a.wav", "n": 1}'
    scrubber = StreamScrubber()
    assert scrubber.feed(body) + scrubber.flush() == body
    assert not scrubber.changed


@given(st.lists(st.integers(min_value=1, max_value=len(BODY)), max_size=8))
def test_streaming_equals_whole(cuts: list[int]) -> None:
    """Any chunking of the body gives the same bytes as scrubbing it whole."""
    bounds = sorted({0, *cuts, len(BODY)})
    scrubber = StreamScrubber()
    out = b"".join(scrubber.feed(BODY[a:b]) for a, b in itertools.pairwise(bounds))
    assert out + scrubber.flush() == scrub(BODY)
    assert scrubber.changed
