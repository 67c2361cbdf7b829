"""Local stand-in for DashScope file transcription and EventBridge callbacks.

``Sandbox`` (in-process, on a thread) and ``SandboxProcess`` (a child process) live in
:mod:`sandbox.server`; behaviour knobs in :class:`sandbox.config.SandboxConfig`.
"""
