"""Wall-clock seconds per phase of a job (cache, epochs, evaluation, audit, report), printed at its end and written
to ``timings.json`` in the run folder, so that a slow run says where its time went.

Next to the wall clock, the CPU seconds of each phase (every thread of this process, plus child processes that
ended within it, such as the decode workers): on a machine shared with other work the wall clock measures the others
too, while CPU seconds divided by the number of cores estimates the phase on an idle machine where it is
compute-bound (docs/performance.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_FILE = "timings.json"


class PhaseTimer:
    """Accumulates the seconds spent in named phases, in the order they first ran."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._start = time.perf_counter()
        self._cpu_start = cpu_seconds()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as phase ``name`` (added to earlier blocks of the same name)."""
        t, c = time.perf_counter(), cpu_seconds()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu_seconds() - c

    def total(self) -> float:
        """Seconds since the timer was made (phases plus whatever ran between them)."""
        return time.perf_counter() - self._start

    def summary(self) -> str:
        """One line: each phase's seconds and share of the total."""
        total = max(self.total(), 1e-9)
        parts = [f"{name} {secs:.1f}s ({secs / total:.0%})" for name, secs in self.seconds.items()]
        other = total - sum(self.seconds.values())
        if other >= 0.05:
            parts.append(f"other {other:.1f}s ({other / total:.0%})")
        cpu = cpu_seconds() - self._cpu_start
        return f"time per phase: {', '.join(parts)}; total {total:.1f}s (CPU {cpu:.0f}s)"

    def write(self, run_dir: str | Path) -> Path:
        """Write ``timings.json``: ``{"phases": {name: seconds}, "total_seconds": ..., "cpu_seconds": {name: CPU
        seconds}, "total_cpu_seconds": ...}``."""
        path = Path(run_dir) / TIMINGS_FILE
        body = {"phases": {k: round(v, 3) for k, v in self.seconds.items()}, "total_seconds": round(self.total(), 3),
                "cpu_seconds": {k: round(v, 3) for k, v in self.cpu_seconds.items()},
                "total_cpu_seconds": round(cpu_seconds() - self._cpu_start, 3)}
        path.write_text(json.dumps(body, indent=2))
        return path


def cpu_seconds() -> float:
    """User plus system CPU seconds of this process (all threads) and of its children that have ended."""
    try:
        import resource  # POSIX only: absent on Windows
    except ImportError:  # not Unix: this process only
        return time.process_time()
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
