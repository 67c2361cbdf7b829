"""Validation of DashScope submit requests, answered like the real service.

Rules from docs/dashscope-transcription.md ("Submitting a task", "Models"): a Bearer key, the
``X-DashScope-Async: enable`` header, a model of a known asynchronous family, ``input.file_urls``
(a list of 1 to 100 http(s) URLs) or, for Qwen filetrans, one ``input.file_url``, and typed
``parameters``. Errors are :class:`ApiError` carrying the HTTP status and the ``code`` and
``message`` of the JSON error body. Status codes and messages mirror what the real gateway is
known to answer (``InvalidApiKey`` 401, ``AccessDenied`` 403 for synchronous calls,
``InvalidParameter`` 400); exact message texts are the sandbox's.
"""

from __future__ import annotations

from typing import Any, Literal

Family = Literal["fun-asr", "paraformer", "qwen3-asr-flash-filetrans"]

_FAMILIES: tuple[Family, ...] = ("qwen3-asr-flash-filetrans", "fun-asr", "paraformer")

# Parameter name → (accepted Python types, description) for the documented parameters.
_PARAMETER_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "channel_id": ((list,), "a list of integers"),
    "language_hints": ((list,), "a list of strings"),
    "vocabulary_id": ((str,), "a string"),
    "diarization_enabled": ((bool,), "a boolean"),
    "speaker_count": ((int,), "an integer"),
    "disfluency_removal_enabled": ((bool,), "a boolean"),
    "timestamp_alignment_enabled": ((bool,), "a boolean"),
    "special_word_filter": ((str,), "a JSON string"),
    "speech_noise_threshold": ((int, float), "a number"),
    "enable_itn": ((bool,), "a boolean"),
    "enable_words": ((bool,), "a boolean"),
    "language": ((str,), "a string"),
}
_ITEM_TYPES = {"channel_id": int, "language_hints": str}


class ApiError(Exception):
    """A request the sandbox refuses: HTTP ``status`` with ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def family_of(model: object) -> Family:
    """The family of ``model``; raises :class:`ApiError` (400) for unknown or synchronous ones."""
    if isinstance(model, str) and not model.startswith("fun-asr-flash"):
        for prefix in _FAMILIES:
            if model == prefix or model.startswith(prefix + "-"):
                return prefix
    raise ApiError(400, "InvalidParameter", f"Model not exist: {model!r}")


def check_api_key(authorization: str | None, api_key: str) -> None:
    """Raise :class:`ApiError` (401 ``InvalidApiKey``) unless the header is ``Bearer <key>``."""
    if authorization != f"Bearer {api_key}":
        raise ApiError(401, "InvalidApiKey", "Invalid API-key provided.")


def _check_urls(urls: object, max_files: int) -> list[str]:
    if not isinstance(urls, list) or not urls:
        raise ApiError(400, "InvalidParameter", "input.file_urls must be a non-empty list")
    if len(urls) > max_files:
        raise ApiError(400, "InvalidParameter", f"input.file_urls holds more than {max_files}")
    for url in urls:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ApiError(400, "InvalidParameter", f"not an http(s) file URL: {url!r}")
    return list(urls)


def _check_parameters(parameters: object) -> dict[str, Any]:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise ApiError(400, "InvalidParameter", "parameters must be an object")
    for name, value in parameters.items():
        types, wanted = _PARAMETER_TYPES.get(name, ((object,), "anything"))
        item = _ITEM_TYPES.get(name)
        bad = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if not bad and item is not None:
            bad = not all(isinstance(v, item) and not isinstance(v, bool) for v in value)
        if bad:
            raise ApiError(400, "InvalidParameter", f"parameters.{name} must be {wanted}")
    count = parameters.get("speaker_count")
    if count is not None and not 2 <= count <= 100:
        raise ApiError(400, "InvalidParameter", "parameters.speaker_count must be 2 to 100")
    return dict(parameters)


def parse_submission(body: object, max_files: int) -> tuple[str, Family, list[str], dict[str, Any]]:
    """``(model, family, file_urls, parameters)`` of a submit body; :class:`ApiError` if invalid."""
    if not isinstance(body, dict):
        raise ApiError(400, "InvalidParameter", "the request body must be a JSON object")
    model = body.get("model")
    family = family_of(model)
    assert isinstance(model, str)
    data = body.get("input")
    if not isinstance(data, dict):
        raise ApiError(400, "InvalidParameter", "input must be an object")
    if family == "qwen3-asr-flash-filetrans":
        urls = _check_urls([data.get("file_url")] if "file_url" in data else None, 1)
    else:
        urls = _check_urls(data.get("file_urls"), max_files)
    return model, family, urls, _check_parameters(body.get("parameters"))
