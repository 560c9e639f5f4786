"""Session-wide fixtures live in tests/fixtures/: built models, a running Mosquitto, llama.cpp's tools."""

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.broker", "tests.fixtures.http", "tests.fixtures.llama_tools"]
