"""Bundled samples, media probing (mutagen and ffprobe) and downloads from OSS-signed URLs."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import oss2
import pytest

from sandbox.media import MediaError, fetch_media, probe
from sandbox.server import Sandbox
from tests.fixtures.sandbox import MediaServer
from tests.sandbox.test_api import finished, submit

SUFFIXES = {".wav", ".mp3", ".m4a", ".opus", ".flac", ".ogg"}
CODECS = {
    "hello.wav": "pcm_s16le",
    "weather.mp3": "mp3",
    "numbers.m4a": "aac",
    "meeting.opus": "opus",
    "greeting.flac": "flac",
    "phone_8k.wav": "pcm_s16le",
    "stereo.ogg": "vorbis",
}
needs_ffprobe = pytest.mark.skipif(not shutil.which("ffprobe"), reason="ffprobe not installed")


def test_samples_cover_formats_and_stay_small(sample_paths: list[Path]) -> None:
    """The samples include wav, mp3, m4a, opus, flac and ogg, each under 200 KB."""
    assert {p.suffix for p in sample_paths} == SUFFIXES
    assert all(p.stat().st_size < 200_000 for p in sample_paths)


@pytest.mark.parametrize("name", sorted(CODECS))
def test_mutagen_reads_every_sample(sample_paths: list[Path], name: str) -> None:
    """Without ffprobe each sample's codec, rate and a 2-6 s duration are read by mutagen."""
    (path,) = [p for p in sample_paths if p.name == name]
    codec, rate, channels, seconds = probe(str(path), use_ffprobe=False) or ("", 0, 0, 0.0)
    assert codec == CODECS[name]
    assert rate in (8000, 16000, 48000) and channels >= 1
    assert 2.0 < seconds < 6.0


@needs_ffprobe
@pytest.mark.parametrize("name", sorted(CODECS))
def test_ffprobe_agrees_with_mutagen(sample_paths: list[Path], name: str) -> None:
    """ffprobe reads the same codec and a duration within 100 ms of mutagen's."""
    (path,) = [p for p in sample_paths if p.name == name]
    by_ffprobe = probe(str(path), use_ffprobe=True)
    by_mutagen = probe(str(path), use_ffprobe=False)
    assert by_ffprobe is not None and by_mutagen is not None
    assert by_ffprobe[0] == by_mutagen[0]
    assert abs(by_ffprobe[3] - by_mutagen[3]) < 0.1


@pytest.mark.parametrize("use_ffprobe", [False, pytest.param(True, marks=needs_ffprobe)])
def test_text_file_is_not_audio(tmp_path: Path, use_ffprobe: bool) -> None:
    """A file that is not media probes as None with either reader."""
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples\n" * 50)
    assert probe(str(path), use_ffprobe=use_ffprobe) is None


def test_download_follows_redirects_and_caps_size(media_server: MediaServer) -> None:
    """fetch_media reads the bytes it downloads, and refuses files over max_bytes."""
    with httpx.Client() as client:
        info = fetch_media(
            client, media_server.url_for("greeting.flac"), max_bytes=10**6, use_ffprobe=False
        )
        assert (info.audio_format, info.sample_rate, info.channels) == ("flac", 16000, 1)
        assert info.size_bytes == len(media_server.blobs["greeting.flac"])
        with pytest.raises(MediaError) as caught:
            fetch_media(client, media_server.url_for("hello.wav"), max_bytes=1000)
    assert caught.value.code == "InvalidFile.FileTooLarge"


def test_downloads_from_oss_signed_urls(
    make_sandbox: Callable[..., Sandbox], oss_bucket: oss2.Bucket, sample_paths: list[Path]
) -> None:
    """Media uploaded through oss2 and shared by sign_url is fetched and transcribed."""
    box = make_sandbox()
    urls = []
    for path in sample_paths[:3]:
        oss_bucket.put_object(f"media/{path.name}", path.read_bytes())
        urls.append(oss_bucket.sign_url("GET", f"media/{path.name}", 3600, slash_safe=True))
    output = finished(
        box,
        submit(box, {"model": "fun-asr", "input": {"file_urls": urls}}).json()["output"]["task_id"],
    )["output"]
    assert output["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 3, "FAILED": 0}


def test_stereo_file_gives_one_transcript_per_channel(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """channel_id [0, 1] on a two-channel file yields two transcripts with their channel ids."""
    body = {
        "model": "paraformer-v2",
        "input": {"file_urls": [media_server.url_for("stereo.ogg")]},
        "parameters": {"channel_id": [0, 1]},
    }
    output = finished(sandbox, submit(sandbox, body).json()["output"]["task_id"])["output"]
    document = httpx.get(output["results"][0]["transcription_url"]).json()
    assert [t["channel_id"] for t in document["transcripts"]] == [0, 1]
    assert document["properties"]["channels"] == [0, 1]
    assert document["transcripts"][0]["text"] != document["transcripts"][1]["text"]


def test_result_text_is_deterministic_and_says_it_is_a_placeholder(
    sandbox: Sandbox, media_server: MediaServer
) -> None:
    """The same file gives the same placeholder text twice; the document says no ASR was done."""
    body = {"model": "fun-asr", "input": {"file_urls": [media_server.url_for("weather.mp3")] * 2}}
    output = finished(sandbox, submit(sandbox, body).json()["output"]["task_id"])["output"]
    first, second = (httpx.get(r["transcription_url"]).json() for r in output["results"])
    assert first["transcripts"] == second["transcripts"]
    assert "no speech recognition" in first["sandbox"]["note"]
    words = first["transcripts"][0]["sentences"][0]["words"]
    assert all(w["begin_time"] < w["end_time"] for w in words)
