"""Helpers for the submitter tests: unique real media files and settings for the real parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import Settings, load_settings
from sandbox.server import Sandbox


def make_media(directory: Path, samples: list[Path], count: int) -> list[Path]:
    """``count`` distinct, decodable media files cycling through the sample formats.

    Each copy gets a unique tail after the audio data, which decoders ignore, so every file
    has its own content hash (and its own object key).
    """
    directory.mkdir(parents=True, exist_ok=True)
    made = []
    for n in range(count):
        sample = samples[n % len(samples)]
        path = directory / f"f{n:05d}{sample.suffix}"
        path.write_bytes(sample.read_bytes() + f"\0unique-{n}-{directory.name}".encode())
        made.append(path)
    return made


def make_bad_media(directory: Path) -> dict[str, str]:
    """A few files the submitter must refuse; path → expected reason."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "notes.txt").write_text("not media")
    (directory / "empty.wav").write_bytes(b"")
    (directory / "slides.pdf").write_bytes(b"%PDF-1.4")
    return {
        str(directory / "notes.txt"): "unsupported_format",
        str(directory / "empty.wav"): "empty_file",
        str(directory / "slides.pdf"): "unsupported_format",
    }


def submit_settings(
    redis_url: str, oss_endpoint: str, bucket: str, box: Sandbox, **changes: Any
) -> Settings:
    """Settings wiring Redis, moto as OSS (``MEDIA_URL``) and the sandbox as DashScope."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "media_url": f"oss://{bucket}/media",
        "oss_endpoint": oss_endpoint,
        "oss_access_key_id": "testing",
        "oss_access_key_secret": "testing",
        "dashscope_api_key": box.config.api_key,
        "dashscope_base_url": box.api_url,
        "submit_rates": "fun-asr=50,paraformer=50,qwen3-asr-flash-filetrans=50",
        "reconcile_after_seconds": 1,
        **changes,
    }
    return load_settings(**values)


def assert_within_rate(arrivals: list[float], rate: int) -> None:
    """No 1 s window holds more than ``rate`` + 1 of the sorted ``arrivals`` (seconds).

    The shared bucket grants at most ``rate`` tokens a second (its own test checks the grants
    exactly). Arrival times are taken at the sandbox, after the submitter's HTTP request has
    crossed the machine; on a loaded two-core machine one request can lag its token by ~0.1 s
    and arrive next to the following one, so one extra arrival per window is the transport's.
    Without the bucket, or at twice the rate, windows hold far more.
    """
    most = max(sum(1 for t in arrivals[i:] if t - start < 1.0) for i, start in enumerate(arrivals))
    assert most <= rate + 1, f"{most} submissions within one second (rate {rate})"
