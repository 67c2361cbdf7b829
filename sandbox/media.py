"""Download media over HTTP and read its format and duration from the bytes.

The stand-in does no recognition, but what it can check it checks for real: each file URL is
fetched with a GET (redirects followed, size capped), then probed with ``ffprobe`` when it is on
``PATH`` and with :mod:`mutagen` otherwise. Failure codes: ``InvalidFile.DownloadFailed`` (the
documented code, docs/dashscope-transcription.md), ``InvalidFile.DecodeFailed`` (not a
supported audio/video format) and ``InvalidFile.AudioLengthError`` (empty or zero-length); the
last two are the sandbox's choice of names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import IO, Any

import httpx
import mutagen


@dataclass(frozen=True)
class MediaInfo:
    """What was read from one file: codec name, sample rate (Hz), channel count, length (ms)."""

    audio_format: str
    sample_rate: int
    channels: int
    duration_ms: int
    size_bytes: int
    sha256: str


class MediaError(Exception):
    """A file that cannot be transcribed; ``code`` and ``message`` go into its subtask."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_DOWNLOAD_FAILED = "InvalidFile.DownloadFailed"
_CANNOT_DOWNLOAD = "The audio file cannot be downloaded."


def _download(client: httpx.Client, url: str, sink: IO[bytes], max_bytes: int) -> str:
    digest = hashlib.sha256()
    try:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise MediaError(_DOWNLOAD_FAILED, _CANNOT_DOWNLOAD)
            for chunk in response.iter_bytes(65_536):
                digest.update(chunk)
                sink.write(chunk)
                if sink.tell() > max_bytes:
                    raise MediaError("InvalidFile.FileTooLarge", "The audio file is too large.")
    except httpx.HTTPError as exc:
        raise MediaError(_DOWNLOAD_FAILED, _CANNOT_DOWNLOAD) from exc
    sink.flush()
    return digest.hexdigest()


def _ffprobe(path: str) -> tuple[str, int, int, float] | None:
    command = ["ffprobe", "-v", "error", "-of", "json", "-show_streams", "-show_format", path]
    done = subprocess.run(command, capture_output=True, timeout=30, check=False)  # noqa: S603  # fixed argv, no shell
    if done.returncode != 0:
        return None
    probe: dict[str, Any] = json.loads(done.stdout or b"{}")
    audio = [s for s in probe.get("streams", []) if s.get("codec_type") == "audio"]
    if not audio:
        return None
    duration = float(probe.get("format", {}).get("duration") or audio[0].get("duration") or 0)
    stream = audio[0]
    rate = int(stream.get("sample_rate", 0))
    return stream["codec_name"], rate, int(stream["channels"]), duration


_MUTAGEN_CODECS = {"WAVE": "pcm_s16le", "MP3": "mp3", "OggOpus": "opus", "OggVorbis": "vorbis"}


def _mutagen(path: str) -> tuple[str, int, int, float] | None:
    try:
        parsed = mutagen.File(path)
    except mutagen.MutagenError:
        return None
    if parsed is None:
        return None
    info = parsed.info
    kind = type(parsed).__name__
    codec = _MUTAGEN_CODECS.get(kind) or str(getattr(info, "codec", "") or kind).lower()
    if kind == "WAVE" and getattr(info, "bits_per_sample", 16) != 16:
        codec = f"pcm_s{info.bits_per_sample}le"
    if codec.startswith("mp4a"):
        codec = "aac"
    # Opus always decodes at 48 kHz; mutagen reports no rate for it.
    rate = int(getattr(info, "sample_rate", 0) or (48_000 if codec == "opus" else 0))
    return codec, rate, int(getattr(info, "channels", 1) or 1), float(info.length or 0)


def probe(path: str, *, use_ffprobe: bool = True) -> tuple[str, int, int, float] | None:
    """``(codec, sample_rate_hz, channels, duration_s)`` of the file at ``path``, or ``None``.

    Uses ``ffprobe`` when ``use_ffprobe`` and it is on ``PATH``, else :mod:`mutagen`.
    """
    if use_ffprobe and shutil.which("ffprobe"):
        return _ffprobe(path)
    return _mutagen(path)


def fetch_media(
    client: httpx.Client, url: str, *, max_bytes: int, use_ffprobe: bool = True
) -> MediaInfo:
    """Download ``url`` and probe it; raises :class:`MediaError` with the subtask's code."""
    with tempfile.NamedTemporaryFile(prefix="sandbox-media-") as sink:
        sha256 = _download(client, url, sink, max_bytes)
        size = sink.tell()
        if size == 0:
            raise MediaError("InvalidFile.AudioLengthError", "The audio file is empty.")
        found = probe(sink.name, use_ffprobe=use_ffprobe)
    if found is None:
        raise MediaError("InvalidFile.DecodeFailed", "The audio format is not supported.")
    codec, rate, channels, seconds = found
    if seconds <= 0:
        raise MediaError("InvalidFile.AudioLengthError", "The audio has no duration.")
    return MediaInfo(codec, rate, channels, round(seconds * 1000), size, sha256)
