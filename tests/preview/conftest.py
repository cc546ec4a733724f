"""Preview tests: the agent process helpers of tests/node (agentproc.py) are importable here."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "node"))
