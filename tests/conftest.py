"""Shared fixtures live in plugin modules under ``tests/fixtures/``, one per real part."""

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.objectstore",
    "tests.fixtures.sandbox",
    "tests.fixtures.worker",
    "tests.fixtures.rabbitmq",
    "tests.fixtures.sentinel",
]
