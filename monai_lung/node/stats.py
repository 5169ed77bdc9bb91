"""In-process counters and per-stage timings of the node, for ``/metrics`` (thread-safe; reset at each start).

Durable totals (studies received, jobs done and failed) come from the queue instead, so they survive restarts.
"""

from __future__ import annotations

import threading


class NodeStats:
    def __init__(self):
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, tuple], float] = {}
        self._stages: dict[str, list[float]] = {}

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + value

    def observe(self, stage: str, seconds: float) -> None:
        """One measurement of a stage's seconds (receive, snapshot, detect, dicom, send, job)."""
        with self._lock:
            total = self._stages.setdefault(stage, [0.0, 0])
            total[0] += float(seconds)
            total[1] += 1

    def counter(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._counters.get((name, tuple(sorted(labels.items()))), 0.0)

    def snapshot(self) -> tuple[dict[tuple[str, tuple], float], dict[str, tuple[float, int]]]:
        with self._lock:
            return dict(self._counters), {k: (v[0], int(v[1])) for k, v in self._stages.items()}
