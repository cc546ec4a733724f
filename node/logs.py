"""Daemon logs: human-readable lines or JSON lines, each carrying the node name.

Every line goes through the ``grapevine`` logger tree (``grapevine.node``,
``grapevine.gossip``, ``grapevine.policy``), to stderr, so systemd's journal
or a test harness collects it. A filter stamps the node name on every record,
so a line from any layer says which agent wrote it.
"""

from __future__ import annotations

import json
import logging
import sys
import time

log = logging.getLogger("grapevine.node")

_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "node"}


class NodeNameFilter(logging.Filter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.node = self.node
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        extra = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}
        tail = "".join(f" {k}={v}" for k, v in sorted(extra.items()))
        line = f"{ts} {record.levelname:<7} [{getattr(record, 'node', '-')}] {record.name}: {record.getMessage()}{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "node": getattr(record, "node", None),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD_ATTRS:
                doc[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, sort_keys=True)


def setup_logging(node: str, fmt: str = "text", level: str = "info") -> logging.Handler:
    """Route the grapevine logger tree to stderr in the chosen format; returns the handler."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(NodeNameFilter(node))
    root = logging.getLogger("grapevine")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    root.propagate = False
    for name in ("aiohttp.access",):
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler
