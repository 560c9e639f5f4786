"""Run a sensor's command (vcgencmd, nvpmodel) on the box, or replay its captured output.

A captured board keeps each command's output in ``<root>/.edgekit-commands/<argv joined by _>``
(``vcgencmd_pmic_read_adc``), as hardware.py keeps NVML's facts in a file: a command is not a
file, and tests must read the same text the real board prints.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

CAPTURED_FOLDER = ".edgekit-commands"
TIMEOUT_S = 2.0  # vcgencmd answers in milliseconds; a hung firmware mailbox must not stall the sampler


class Commands:
    """Output of small read-only commands below ``root``: real on ``/``, captured elsewhere."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def output(self, *argv: str) -> str | None:
        """The command's stdout, or None when the box has no such command or it failed."""
        if self.root != Path("/"):
            return _captured(self.root / CAPTURED_FOLDER / "_".join(argv))
        if shutil.which(argv[0]) is None:
            return None
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.debug("%s: %s", " ".join(argv), exc)
            return None
        if done.returncode != 0:
            log.debug("%s exited %d: %s", " ".join(argv), done.returncode, done.stderr.strip())
            return None
        return done.stdout


def _captured(path: Path) -> str | None:
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError):
        return None
