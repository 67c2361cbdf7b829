"""Batch planning, request parameters and dedupe fingerprints (plain functions)."""

from __future__ import annotations

import pytest

from worker.submission.batching import (
    batch_size_for,
    check_parameters,
    fingerprint,
    parse_parameters,
    plan_batches,
)


def test_250_files_make_three_batches_of_at_most_100() -> None:
    """250 items for a batch family split in order into 100, 100 and 50."""
    batches = plan_batches(list(range(250)), "fun-asr")
    assert [len(b) for b in batches] == [100, 100, 50]
    assert [x for b in batches for x in b] == list(range(250))


def test_qwen_filetrans_is_one_file_per_task() -> None:
    """Qwen filetrans takes one file per task whatever the configured size."""
    assert batch_size_for("qwen3-asr-flash-filetrans", 100) == 1
    assert plan_batches(["a", "b", "c"], "qwen3-asr-flash-filetrans") == [["a"], ["b"], ["c"]]


def test_configured_size_is_capped_at_100() -> None:
    """The configured batch size applies but never exceeds 100 or drops below 1."""
    assert batch_size_for("paraformer-v2", 7) == 7
    assert batch_size_for("paraformer-v2", 500) == 100
    assert batch_size_for("paraformer-v2", 0) == 1
    assert plan_batches([], "paraformer-v2") == []


def test_parameters_parse_json_values_and_strings() -> None:
    """k=v values are JSON when they parse (lists, booleans, numbers), else strings."""
    parsed = parse_parameters(
        [
            'language_hints=["zh","en"]',
            "diarization_enabled=true",
            "vocabulary_id=vocab-1",
            "channel_id=[0,1]",
            "speech_noise_threshold=0.3",
        ]
    )
    assert parsed == {
        "language_hints": ["zh", "en"],
        "diarization_enabled": True,
        "vocabulary_id": "vocab-1",
        "channel_id": [0, 1],
        "speech_noise_threshold": 0.3,
    }


@pytest.mark.parametrize(
    "pair", ["novalue", "=x", "channel_id=0", "diarization_enabled=1", 'language_hints=["zh",1]']
)
def test_bad_parameters_are_refused(pair: str) -> None:
    """A pair without '=' or a known parameter of the wrong type raises ValueError."""
    with pytest.raises(ValueError):
        parse_parameters([pair])


def test_unknown_parameters_pass_through() -> None:
    """Parameters the spec does not list are passed through untouched."""
    check_parameters({"new_knob": {"a": 1}})
    assert parse_parameters(["new_knob=5"]) == {"new_knob": 5}


def test_fingerprint_depends_on_model_parameters_and_content() -> None:
    """The dedupe fingerprint changes with model, parameters or content, not with key order."""
    base = fingerprint("fun-asr", {"a": 1, "b": 2}, "00" * 32)
    assert base == fingerprint("fun-asr", {"b": 2, "a": 1}, "00" * 32)
    assert base != fingerprint("paraformer-v2", {"a": 1, "b": 2}, "00" * 32)
    assert base != fingerprint("fun-asr", {"a": 1}, "00" * 32)
    assert base != fingerprint("fun-asr", {"a": 1, "b": 2}, "11" * 32)
