"""Model families of DashScope file transcription (`docs/dashscope-transcription.md`, "Models").

New snapshots appear over time, so a model is classified by its family prefix. The synchronous
models ``qwen3-asr-flash`` (no ``-filetrans``) and ``fun-asr-flash-*`` never produce
completion events and are rejected.
"""

from __future__ import annotations

from typing import Literal

from core.errors import PermanentError, Reason

Family = Literal["fun-asr", "paraformer", "qwen3-asr-flash-filetrans"]

_PREFIXES: tuple[Family, ...] = ("qwen3-asr-flash-filetrans", "fun-asr", "paraformer")
_SYNCHRONOUS = ("fun-asr-flash",)


def family_of(model: str) -> Family:
    """The family of ``model``; raises :class:`PermanentError` (``unknown_model``) naming it."""
    if not model.startswith(_SYNCHRONOUS):
        for prefix in _PREFIXES:
            if model == prefix or model.startswith(prefix + "-"):
                return prefix
    raise PermanentError(f"unknown transcription model {model!r}", reason=Reason.UNKNOWN_MODEL)


def model_from_api_key(user_api_unique_key: str) -> str:
    """The model named by an event's ``data.user_api_unique_key`` (its last ``:`` segment)."""
    return user_api_unique_key.rsplit(":", 1)[-1]


def is_single_file(model: str) -> bool:
    """True for families that take one ``input.file_url`` per task (Qwen filetrans)."""
    return family_of(model) == "qwen3-asr-flash-filetrans"
