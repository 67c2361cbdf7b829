"""asr-ingest command line and the embedded local stack (``asr-ingest run``)."""
