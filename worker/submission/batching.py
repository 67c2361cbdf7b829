"""Planning submissions, as plain functions: batches, request parameters, dedupe fingerprints.

Facts from `docs/dashscope-transcription.md`, "Submitting a task": at most 100 URLs per
request (``SUBMIT_BATCH_SIZE``, default 100), one file per task for Qwen3-ASR-Flash-Filetrans,
and the request parameters with their types (passed through as the user sets them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from core.models import is_single_file

T = TypeVar("T")

MAX_BATCH = 100

# Parameter name → accepted JSON types (bool is not an int here).
_PARAM_TYPES: dict[str, tuple[str, ...]] = {
    "channel_id": ("list[int]",),
    "language_hints": ("list[str]",),
    "vocabulary_id": ("str",),
    "diarization_enabled": ("bool",),
    "speaker_count": ("int",),
    "disfluency_removal_enabled": ("bool",),
    "timestamp_alignment_enabled": ("bool",),
    "special_word_filter": ("str",),
    "speech_noise_threshold": ("float", "int"),
    "enable_itn": ("bool",),
    "enable_words": ("bool",),
    "language": ("str",),
}


def batch_size_for(model: str, configured: int = MAX_BATCH) -> int:
    """Files per task for ``model``: 1 for single-file families, else ``configured`` (≤ 100)."""
    return 1 if is_single_file(model) else max(1, min(configured, MAX_BATCH))


def plan_batches(items: Sequence[T], model: str, configured: int = MAX_BATCH) -> list[list[T]]:
    """Split ``items`` in order into batches of at most :func:`batch_size_for` items."""
    size = batch_size_for(model, configured)
    return [list(items[start : start + size]) for start in range(0, len(items), size)]


def _type_name(value: Any) -> str:
    if isinstance(value, list):
        inner = {_type_name(item) for item in value}
        return f"list[{inner.pop()}]" if len(inner) == 1 else "list"
    return type(value).__name__


def parse_parameters(pairs: Iterable[str]) -> dict[str, Any]:
    """``["k=v", ...]`` → parameters; each value is JSON when it parses, else a string.

    ``language_hints=["zh","en"]``, ``channel_id=[0,1]``, ``diarization_enabled=true``.
    Raises ``ValueError`` for a pair without ``=`` or a known parameter of the wrong type.
    """
    parameters: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"parameter {pair!r} is not k=v")
        try:
            parameters[name.strip()] = json.loads(raw)
        except ValueError:
            parameters[name.strip()] = raw
    check_parameters(parameters)
    return parameters


def check_parameters(parameters: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first known parameter whose value has the wrong type."""
    for name, value in parameters.items():
        accepted = _PARAM_TYPES.get(name)
        if accepted is not None and _type_name(value) not in accepted:
            raise ValueError(f"parameter {name} must be {' or '.join(accepted)}, got {value!r}")


def fingerprint(model: str, parameters: dict[str, Any], sha256: str) -> str:
    """Hex digest naming "this content, transcribed by this model with these parameters"."""
    canonical = json.dumps([model, parameters, sha256], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
