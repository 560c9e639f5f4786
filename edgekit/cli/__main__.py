"""`python -m edgekit.cli`: the `edgekit` command (tests and the docs' runner call it so)."""

import sys

from edgekit.cli import main

sys.exit(main())
