"""CPU time of a process tree, for benchmarks that budget training in CPU time rather than wall time.

The machine may be shared: other work slows the wall clock but does not spend a CPU-time budget.
"""

from __future__ import annotations

import os
from pathlib import Path


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (default: this one) and its live descendants (e.g.
    DataLoader workers), plus the children each of them has already reaped (Linux /proc)."""
    pid = os.getpid() if pid is None else pid
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # the process ended meanwhile
            # after the name: state ppid ... utime(11) stime(12) cutime(13) cstime(14), 0-based from state
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += stats[current][1]
            todo.extend(child for child, (ppid, _) in stats.items() if ppid == current)
    return total / tick
