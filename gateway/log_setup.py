"""Logging for the command line: one line per event, as text or as JSON lines.

Default verbosity shows the gateway's own state changes (INFO from `gateway.*`: broker lost /
back, patches connected / lost, backlog drains, alarms raised and cleared) and warnings from
everything else; `-q` only warnings and errors; `-v` adds the libraries' INFO and our DEBUG.
"""

from __future__ import annotations

import json
import logging
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, msg, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z",
                 "level": record.levelname, "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(verbose: int = 0, quiet: bool = False, json_lines: bool = False,
              state_changes: bool = True) -> None:
    """`state_changes`: the gateway's INFO lines at default verbosity (`run`; not for
    commands with a screen of their own, such as `demo`'s live view)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    if quiet:
        root.setLevel(logging.WARNING)
        logging.getLogger("gateway").setLevel(logging.WARNING)
        return
    root.setLevel(logging.WARNING if verbose == 0 else
                  logging.INFO if verbose == 1 else logging.DEBUG)
    logging.getLogger("gateway").setLevel(
        logging.DEBUG if verbose else logging.INFO if state_changes else logging.WARNING)
