"""Result files in the documented shape of each model family, with placeholder text.

Shapes come from the seeds (docs/dashscope-transcription.md, "The transcription result file"):
Fun-ASR / Paraformer carry ``properties`` and ``transcripts[].sentences[].words[]`` with
millisecond ``begin_time``/``end_time``; ``speaker_id`` appears only with diarization. Qwen
filetrans carries ``audio_info`` and sentences with ``language`` and ``emotion``. The stand-in
does no speech recognition: the words are picked deterministically from the file's SHA-256, and
a top-level ``sandbox`` object says so (it also holds the optional size padding).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sandbox.media import MediaInfo

NOTE = "asr-ingest sandbox: no speech recognition was done; the text is a placeholder."
_ALPHABET = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike "
    "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
)
_WORDS = _ALPHABET.split()
_WORDS_PER_SECOND = 2.5
_WORDS_PER_SENTENCE = 8
_MAX_WORDS = 5000


def _words(media: MediaInfo, channel: int) -> list[str]:
    count = max(1, min(_MAX_WORDS, int(media.duration_ms / 1000 * _WORDS_PER_SECOND)))
    seed = hashlib.sha256(f"{media.sha256}:{channel}".encode()).digest()
    return [_WORDS[seed[i % len(seed)] * (i + 1) % len(_WORDS)] for i in range(count)]


def _sentences(media: MediaInfo, channel: int, *, speakers: int) -> list[dict[str, Any]]:
    words = _words(media, channel)
    step = media.duration_ms // len(words) or 1
    sentences: list[dict[str, Any]] = []
    for start in range(0, len(words), _WORDS_PER_SENTENCE):
        chunk = words[start : start + _WORDS_PER_SENTENCE]
        timed = [
            {
                "begin_time": (start + i) * step,
                "end_time": (start + i + 1) * step,
                "text": word + " ",
                "punctuation": "." if i == len(chunk) - 1 else "",
            }
            for i, word in enumerate(chunk)
        ]
        sentence: dict[str, Any] = {
            "begin_time": timed[0]["begin_time"],
            "end_time": timed[-1]["end_time"],
            "text": " ".join(chunk).capitalize() + ".",
            "sentence_id": len(sentences) + 1,
            "words": timed,
        }
        if speakers:
            sentence["speaker_id"] = len(sentences) % speakers
        sentences.append(sentence)
    return sentences


def _channels(media: MediaInfo, parameters: dict[str, Any]) -> list[int]:
    wanted = parameters.get("channel_id") or [0]
    return [c for c in wanted if 0 <= c < max(media.channels, 1)] or [0]


def classic_result(file_url: str, media: MediaInfo, parameters: dict[str, Any]) -> dict[str, Any]:
    """A Fun-ASR / Paraformer result document for one file (a JSON-ready dict)."""
    speakers = 0
    if parameters.get("diarization_enabled"):
        speakers = int(parameters.get("speaker_count") or 2)
    channels = _channels(media, parameters)
    transcripts = []
    for channel in channels:
        sentences = _sentences(media, channel, speakers=speakers)
        transcripts.append(
            {
                "channel_id": channel,
                "content_duration_in_milliseconds": sentences[-1]["end_time"],
                "text": " ".join(s["text"] for s in sentences),
                "sentences": sentences,
            }
        )
    properties = {
        "audio_format": media.audio_format,
        "channels": channels,
        "original_sampling_rate": media.sample_rate,
        "original_duration_in_milliseconds": media.duration_ms,
    }
    return {"file_url": file_url, "properties": properties, "transcripts": transcripts}


def qwen_result(file_url: str, media: MediaInfo, parameters: dict[str, Any]) -> dict[str, Any]:
    """A Qwen3-ASR-Flash-Filetrans result document for one file (a JSON-ready dict)."""
    language = parameters.get("language") or "en"
    transcripts = []
    for channel in _channels(media, parameters):
        sentences = _sentences(media, channel, speakers=0)
        for sentence in sentences:
            sentence.update(language=language, emotion="neutral")
            if not parameters.get("enable_words"):
                del sentence["words"]
        text = " ".join(s["text"] for s in sentences)
        transcripts.append({"channel_id": channel, "text": text, "sentences": sentences})
    audio_info = {"format": media.audio_format, "sample_rate": media.sample_rate}
    return {"file_url": file_url, "audio_info": audio_info, "transcripts": transcripts}


def render(document: dict[str, Any], padding_bytes: int = 0) -> bytes:
    """The served bytes of ``document``, with the ``sandbox`` note and ``padding_bytes`` extra."""
    note: dict[str, Any] = {"note": NOTE}
    if padding_bytes > 0:
        note["padding"] = "x" * padding_bytes
    return json.dumps({**document, "sandbox": note}, ensure_ascii=False).encode()
