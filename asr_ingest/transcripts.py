"""Readable transcripts from archived DashScope results: text, SRT, WebVTT, JSON lines.

A result file (`docs/dashscope-transcription.md`, "The transcription result file") holds
``transcripts[]`` (one per audio channel, ``channel_id``) of ``sentences[]`` with
``begin_time``/``end_time`` in milliseconds, ``text`` and, with diarization, ``speaker_id``.
Fun-ASR, Paraformer and Qwen3-ASR-Flash-Filetrans results share that part. SRT is written with
the ``srt`` library and WebVTT with ``webvtt-py``.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Literal

import srt
import webvtt

Format = Literal["txt", "srt", "vtt", "jsonl"]
FORMATS: tuple[Format, ...] = ("txt", "srt", "vtt", "jsonl")


@dataclass(frozen=True, slots=True)
class Sentence:
    """One sentence: times in milliseconds, ``speaker`` None unless diarized."""

    start_ms: int
    end_ms: int
    text: str
    channel: int = 0
    speaker: int | None = None


def sentences(result: dict[str, Any]) -> list[Sentence]:
    """Every sentence of a result document, by start time (channels interleaved)."""
    found = []
    for transcript in result.get("transcripts") or []:
        channel = transcript.get("channel_id") or 0
        for item in transcript.get("sentences") or []:
            speaker = item.get("speaker_id")
            found.append(
                Sentence(
                    start_ms=int(item.get("begin_time") or 0),
                    end_ms=int(item.get("end_time") or 0),
                    text=str(item.get("text") or "").strip(),
                    channel=int(channel),
                    speaker=int(speaker) if isinstance(speaker, int) else None,
                )
            )
    return sorted(found, key=lambda s: (s.start_ms, s.channel))


def _label(sentence: Sentence, channels: int) -> str:
    """``Speaker N: `` when diarized, ``Channel N: `` for multi-channel audio, else ""."""
    if sentence.speaker is not None:
        return f"Speaker {sentence.speaker + 1}: "
    if channels > 1:
        return f"Channel {sentence.channel}: "
    return ""


def render(result: dict[str, Any], fmt: Format) -> str:
    """The transcript of ``result`` in ``fmt``; raises :class:`ValueError` for another format."""
    items = sentences(result)
    channels = len({s.channel for s in items})
    labelled = [(_label(s, channels) + s.text, s) for s in items]
    if fmt == "txt":
        return "".join(f"{text}\n" for text, _ in labelled)
    if fmt == "jsonl":
        return "".join(json.dumps(asdict(s), ensure_ascii=False) + "\n" for s in items)
    if fmt == "srt":
        subtitles = [
            srt.Subtitle(n, timedelta(milliseconds=s.start_ms), timedelta(milliseconds=s.end_ms), t)
            for n, (t, s) in enumerate(labelled, start=1)
        ]
        return str(srt.compose(subtitles))
    if fmt == "vtt":
        return _vtt(labelled)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def _vtt(labelled: list[tuple[str, Sentence]]) -> str:
    document = webvtt.WebVTT()
    for text, s in labelled:
        document.captions.append(webvtt.Caption(_timestamp(s.start_ms), _timestamp(s.end_ms), text))
    out = io.StringIO()
    document.write(out)
    return out.getvalue()
