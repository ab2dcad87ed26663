"""Shared pytest configuration: fixtures live in tests/fixtures/, one module per area."""

pytest_plugins = [
    "tests.fixtures.mqtt_broker",
    "tests.fixtures.http_servers",
    "tests.fixtures.agent",
]
