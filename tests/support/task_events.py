"""Build DashScope completion events and result files as the spec documents them.

Shapes from `docs/dashscope-transcription.md` ("The completion event", "Querying a task",
"The transcription result file"). Test data only; no code shared with the parser under test.
"""

from __future__ import annotations

import json
from typing import Any


def result_file(name: str = "a.wav", words: int = 3) -> bytes:
    """A Fun-ASR/Paraformer-shaped result JSON body for media ``name`` with ``words`` words."""
    sentence = {
        "begin_time": 100,
        "end_time": 3820,
        "text": "Hello world " * words,
        "sentence_id": 1,
        "words": [
            {"begin_time": 100 + i, "end_time": 200 + i, "text": "w ", "punctuation": ""}
            for i in range(words)
        ],
    }
    document = {
        "file_url": f"https://media.example/{name}",
        "properties": {"audio_format": "pcm_s16le", "channels": [0]},
        "transcripts": [{"channel_id": 0, "text": "Hello world", "sentences": [sentence]}],
    }
    return json.dumps(document).encode()


def ok(url: str, file_url: str = "https://media.example/a.wav?Expires=1&Signature=x") -> dict:
    """A succeeded ``results[]`` entry."""
    return {"file_url": file_url, "transcription_url": url, "subtask_status": "SUCCEEDED"}


def failed(file_url: str = "https://media.example/b.wav") -> dict:
    """A failed ``results[]`` entry (the seeds' download failure)."""
    return {
        "file_url": file_url,
        "code": "InvalidFile.DownloadFailed",
        "message": "The audio file cannot be downloaded.",
        "subtask_status": "FAILED",
    }


def batch_output(task_id: str, results: list[dict], status: str = "SUCCEEDED") -> dict:
    """A Fun-ASR/Paraformer task ``output`` object."""
    return {"task_id": task_id, "task_status": status, "results": results}


def qwen_output(task_id: str, url: str) -> dict:
    """A Qwen3-ASR-Flash-Filetrans task ``output`` object (singular ``result``)."""
    return {
        "task_id": task_id,
        "task_status": "SUCCEEDED",
        "result": {"file_url": "https://media.example/q.wav", "transcription_url": url},
    }


def failed_output(task_id: str) -> dict:
    """A failed task's ``output``: ``code`` and ``message`` instead of results."""
    return {
        "task_id": task_id,
        "task_status": "FAILED",
        "code": "InvalidFile.DecodeFailed",
        "message": "The audio file cannot be decoded.",
    }


def event(
    task_id: str,
    model: str,
    output: dict | None,
    *,
    event_id: str = "evt-1",
    status: str | None = None,
) -> bytes:
    """The raw CloudEvents body of an AsyncTaskFinish event; ``output`` None: no result."""
    data: dict[str, Any] = {
        "task_id": task_id,
        "task_status": status or (output or {}).get("task_status", "SUCCEEDED"),
        "user_api_unique_key": f"apikey:v1:audio:asr:transcription:{model}",
        "region": "cn-beijing",
        "contain_result": output is not None,
    }
    if output is not None:
        data["output_result"] = {"output": output}
    envelope = {
        "id": event_id,
        "source": "acs.dashscope",
        "specversion": "1.0",
        "type": "dashscope:System:AsyncTaskFinish",
        "time": "2025-10-25T01:45:16.969Z",
        "data": data,
    }
    return json.dumps(envelope).encode()
