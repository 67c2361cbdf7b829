"""The shared kernel of asr-ingest: what the webhook and the worker both rely on.

Settings (:mod:`core.settings`), logging (:mod:`core.logs`), queue and task names
(:mod:`core.queues`), the broker configuration every publisher and worker derives from
(:mod:`core.broker`), the receipt store (:mod:`core.store`), the event envelope
(:mod:`core.events`), model families (:mod:`core.models`) and the one error vocabulary
(:mod:`core.errors`). It imports neither :mod:`webhook` nor :mod:`worker`.
"""
