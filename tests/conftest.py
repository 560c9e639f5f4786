"""Session-wide fixtures live in tests/fixtures/: built models and a running Mosquitto."""

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.broker", "tests.fixtures.http"]
