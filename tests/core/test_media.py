"""The media index: which local recording each submitted file came from."""

from __future__ import annotations

import redis

from core.media import Media, media_for, read_media, write_media

A = Media("talks/a.wav", "aa" * 32, 10)
B = Media("talks/b.wav", "bb" * 32, 20)


def test_index_round_trip_and_expiry(redis_client: redis.Redis) -> None:
    """What is written for a task reads back whole, and expires with the given TTL."""
    pipe = redis_client.pipeline()
    write_media(pipe, "t", {"u/a.wav": A, "u/b.wav": B}, 60)
    pipe.execute()
    assert read_media(redis_client, "t") == {"u/a.wav": A, "u/b.wav": B}
    assert 0 < redis_client.ttl("asr:media:t") <= 60
    assert read_media(redis_client, "other") == {}


def test_match_by_object_key_at_the_end_of_the_url_path() -> None:
    """A file_url matches the key its path ends with; a lone file matches without one."""
    index = {"u/a.wav": A, "u/b.wav": B}
    assert media_for("https://h.example/media/u/b.wav", index, only_file=False) == B
    assert media_for("https://h.example/media/u/c.wav", index, only_file=False) is None
    assert media_for("", {"u/a.wav": A}, only_file=True) == A
    assert media_for("", index, only_file=True) is None
