"""Crash points for testing that a killed node loses nothing: ``MONAI_LUNG_NODE_CRASH_AT=<point>`` makes the
process kill itself (SIGKILL, as ``kill -9`` would) when it reaches that point.

Points: ``stored`` (an instance file is in place, not yet recorded), ``claimed`` (a worker took a job),
``detected`` (the results are written and recorded), ``acked`` (a destination acknowledged an object that is not
yet recorded as sent), ``sent`` (everything is sent, the job is not yet done).
"""

from __future__ import annotations

import logging
import os
import signal

CRASH_ENV = "MONAI_LUNG_NODE_CRASH_AT"
POINTS = ("stored", "claimed", "detected", "acked", "sent")


def crash_point(name: str) -> None:
    if os.environ.get(CRASH_ENV) == name:
        logging.getLogger("monai_lung.node").warning("%s=%s: killing the node (SIGKILL)", CRASH_ENV, name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
