"""Asynchronous tasks of other kinds (image, video) that a real account's default rule forwards.

docs/eventbridge-signature.md ("What a receiver must do around it"): the default DashScope rule
(``source: acs.dashscope``, ``type: dashscope:System:AsyncTaskFinish``) forwards every
asynchronous task of the account, image and video jobs too; a receiver must answer them
``200 ignored``. The sandbox makes such tasks (already finished), lists and answers queries for
them, and pushes their signed events. Their ``user_api_unique_key`` follows the transcription
pattern (``apikey:v1:`` + the service path's segments + model; the image and video paths are
``services/aigc/text2image/image-synthesis`` and ``services/aigc/video-generation/
video-synthesis``): an inference, not a documented value. Output shapes follow the Wanx
query answers: image tasks carry ``output.results[].url`` (a result list *without*
``transcription_url``), video tasks ``output.video_url``. Image events carry their output
(``contain_result: true``), video events do not (``contain_result: false``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sandbox.state import API_KEY_ID, china_time, list_record

# (model, user_api_unique_key prefix, kind)
FOREIGN_MODELS = (
    ("wanx2.1-t2i-turbo", "apikey:v1:aigc:text2image:image-synthesis:", "image"),
    ("wanx2.1-i2v-turbo", "apikey:v1:aigc:video-generation:video-synthesis:", "video"),
)


@dataclass
class ForeignTask:
    """One finished image or video task; times in epoch seconds, ``media_url`` its result."""

    task_id: str
    request_id: str
    model: str
    key: str
    kind: str
    media_url: str
    submitted_at: float
    scheduled_at: float | None
    ended_at: float | None
    status: str = "SUCCEEDED"

    def output(self) -> dict[str, Any]:
        """The ``output`` of ``GET /tasks/{task_id}`` for this task."""
        out: dict[str, Any] = {"task_id": self.task_id, "task_status": self.status}
        out["submit_time"] = china_time(self.submitted_at)
        out["scheduled_time"] = china_time(self.scheduled_at or self.submitted_at)
        out["end_time"] = china_time(self.ended_at or self.submitted_at)
        if self.kind == "image":
            out["results"] = [{"orig_prompt": "a lighthouse at dusk", "url": self.media_url}]
            out["task_metrics"] = {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
        else:
            out["video_url"] = self.media_url
        return out

    def usage(self) -> dict[str, Any]:
        """The ``usage`` of the query answer (image count, or video length in seconds)."""
        if self.kind == "image":
            return {"image_count": 1}
        return {"video_duration": 5, "video_ratio": "1280*720", "video_count": 1}

    def record(self, region: str, account_id: str) -> dict[str, Any]:
        """This task's entry in ``GET /tasks``."""
        return list_record(self, self.key, region, account_id)

    def event_data(self, region: str, with_result: bool) -> dict[str, Any]:
        """The ``data`` of this task's AsyncTaskFinish event."""
        data: dict[str, Any] = {
            "task_id": self.task_id,
            "task_status": self.status,
            "start_time": china_time(self.scheduled_at or self.submitted_at, millis=False),
            "end_time": china_time(self.ended_at or self.submitted_at, millis=False),
            "user_api_unique_key": self.key,
            "region": region,
            "request_id": self.request_id,
            "api_key_id": API_KEY_ID,
            "contain_result": with_result and self.kind == "image",
        }
        if data["contain_result"]:
            data["output_result"] = {"output": self.output(), "usage": self.usage()}
        return data


def make_foreign_task(index: int, ended_at: float, base_url: str) -> ForeignTask:
    """The ``index``-th foreign task (image, video, image, ...), ended at ``ended_at``.

    Its media link points at the sandbox (``base_url``) and is not served (403): nothing should
    ever fetch it.
    """
    model, prefix, kind = FOREIGN_MODELS[index % len(FOREIGN_MODELS)]
    task_id = str(uuid.uuid4())
    suffix = "png" if kind == "image" else "mp4"
    media_url = f"{base_url}/results/{task_id}/output.{suffix}?Expires=0&Signature=foreign"
    return ForeignTask(
        task_id=task_id,
        request_id=str(uuid.uuid4()),
        model=model,
        key=prefix + model,
        kind=kind,
        media_url=media_url,
        submitted_at=ended_at - 8.0,
        scheduled_at=ended_at - 6.0,
        ended_at=ended_at,
    )
