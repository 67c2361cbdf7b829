"""The limit: a bare Flask endpoint doing only the unavoidable work of one delivery.

``webhook_bench.py`` serves it under the Procfile's gunicorn settings beside the bare Flask app
and the webhook; its peak requests/s is what the webhook is measured against (target: webhook
>= 0.9 x limit). Per delivery it does, and nothing else:

1. the v2 signature check of `docs/eventbridge-signature.md` with a public key loaded once at
   start: timestamp window, string-to-sign (target URL, the four signed headers, the body and
   a trailing newline, the form the benchmark's signer uses), RSA PKCS#1 v1.5 / SHA-256;
2. ``json.loads`` of the verified body for ``data.task_id``;
3. one Lua script: EXISTS check, HSET of the body and ``received_at``, EXPIRE, and LPUSH of a
   message rendered once at start (the webhook's real archive message, task id spliced in);
4. a small JSON answer from pre-encoded bytes.

Keys live under ``limit:`` so nothing consumes the messages. Environment: ``REDIS_URL``,
``WEBHOOK_PUBLIC_URL``, ``LIMIT_CERT_FILE`` (PEM certificate), ``LIMIT_MESSAGE_FILE`` (the
message with :data:`TASK_ID_MARK` where the task id goes).
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import redis
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Flask, Response, request

TASK_ID_MARK = "@@TASK_ID@@"
QUEUE_KEY = "limit:archive"
TTL_SECONDS = 3600
MAX_SKEW_MS = 60_000
_SIGNED = (
    "x-eventbridge-signature-timestamp",
    "x-eventbridge-hash-method",
    "x-eventbridge-signature-version",
    "x-eventbridge-signature-url",
)
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'body', ARGV[1], 'received_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('LPUSH', KEYS[2], ARGV[4])
return 1
"""
_ACCEPTED = b'{"status":"accepted"}'
_DUPLICATE = b'{"status":"duplicate"}'
_REJECTED = b'{"error":"bad_signature"}'


def create_limit_app(
    redis_url: str | None = None,
    target_url: str | None = None,
    cert_file: str | None = None,
    message_file: str | None = None,
) -> Flask:
    """The limit app; each argument defaults to its environment variable (module docstring)."""
    pem = Path(cert_file or os.environ["LIMIT_CERT_FILE"]).read_bytes()
    key = x509.load_pem_x509_certificate(pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    target = (target_url or os.environ["WEBHOOK_PUBLIC_URL"]).encode() + b"\n"
    template = Path(message_file or os.environ["LIMIT_MESSAGE_FILE"]).read_text()
    head, tail = template.split(TASK_ID_MARK, 1)
    client = redis.Redis.from_url(redis_url or os.environ["REDIS_URL"])
    claim = client.register_script(_CLAIM)
    pkcs1, sha256 = padding.PKCS1v15(), hashes.SHA256()
    app = Flask("limit")

    @app.post("/callbacks/eventbridge")
    def callback() -> Response:
        body = request.get_data(cache=False)
        headers = request.headers
        stamp = headers.get("x-eventbridge-signature-timestamp", "")
        if not stamp.isdigit() or abs(time.time() * 1000 - int(stamp)) > MAX_SKEW_MS:
            return Response(_REJECTED, 401, content_type="application/json")
        lines = "".join(f"{name}: {headers.get(name, '')}\n" for name in _SIGNED)
        try:
            signature = base64.b64decode(headers.get("x-eventbridge-signature-v2", ""))
            key.verify(signature, target + lines.encode("latin-1") + body + b"\n", pkcs1, sha256)
        except (InvalidSignature, ValueError):
            return Response(_REJECTED, 401, content_type="application/json")
        task_id = json.loads(body)["data"]["task_id"]
        args = [body, repr(time.time()), TTL_SECONDS, head + task_id + tail]
        claimed = claim(keys=[f"limit:receipt:{task_id}", QUEUE_KEY], args=args)
        return Response(_ACCEPTED if claimed else _DUPLICATE, content_type="application/json")

    return app
