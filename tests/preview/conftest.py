"""Preview tests: the agent process helpers of tests/node (agentproc.py) are importable here."""

from __future__ import annotations


