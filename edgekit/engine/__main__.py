"""The engine's worker process: ``python -m edgekit.engine CONN_FD HEARTBEAT_FD CANCEL_FD``."""

import sys

from edgekit.engine.worker import run_from_argv

run_from_argv(sys.argv[1:])
