"""``python -m edge_agent``: the same command line as the ``edge-agent`` script."""

from __future__ import annotations

import sys

from edge_agent.cli import main

if __name__ == "__main__":  # importing the module (tests walk every module) must not run it
    sys.exit(main())
