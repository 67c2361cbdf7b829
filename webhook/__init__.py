"""asr-ingest webhook: verifies, stores and enqueues EventBridge completion events."""
