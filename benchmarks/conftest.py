"""The benchmark suite: `make bench` (pytest benchmarks --benchmark-enable ...) runs every bench_*.py.

Benchmark files are named bench_*.py so the test run (testpaths = tests) never picks them
up; this hook makes pytest collect them when it is pointed at benchmarks/. Fixtures (built
models, a running Mosquitto) are the tests' own, from tests/fixtures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `pytest benchmarks` without `python -m`: tests.fixtures must import
    sys.path.insert(0, str(REPO))

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.broker"]


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # A file named on the command line is collected by pytest itself: collecting it here too would run it twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
