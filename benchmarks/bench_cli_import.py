"""How long ``covidscreen --help`` spends importing (the goal is under 1 s), and which heavy libraries it loads.

Each figure is the median of N fresh interpreters (the first one warms the file cache and is dropped):

- import: ``import covidscreen.cli`` timed inside the interpreter, wall and CPU (what ``--help`` imports before it
  prints);
- --help: the whole ``python -m covidscreen --help`` process, wall and CPU (user+sys) time, against an empty
  ``python -c pass`` of the same interpreter (its start-up, not covidscreen's).

Wall times on a shared, loaded machine are noisy; the CPU seconds and the in-process import time are the figures
to compare. Run: ``PYTHONPATH=src .venv/bin/python benchmarks/bench_cli_import.py [N]``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time

HEAVY = ("torch", "numpy", "pandas", "timm", "torchvision", "cv2", "matplotlib", "sklearn", "pydicom", "scipy")
PROBE = ("import sys, time; t, c = time.perf_counter(), time.process_time(); import covidscreen.cli; "
         "dt, dc = time.perf_counter() - t, time.process_time() - c; "
         f"print(dt, dc, ','.join(m for m in {HEAVY!r} if m in sys.modules))")


def _process(args: list[str]) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + sys of the child) and standard output of one run of ``args``."""
    before = os.times()
    t = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True, env=os.environ.copy()).stdout
    wall = time.perf_counter() - t
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return wall, cpu, out


def main(n: int = 7) -> None:
    py = sys.executable
    imports, import_cpu, heavy = [], [], ""
    helps, help_cpu, empties, empty_cpu = [], [], [], []
    for i in range(n + 1):
        _, _, out = _process([py, "-c", PROBE])
        dt, dc, *loaded = out.split()
        wall, cpu, _ = _process([py, "-m", "covidscreen", "--help"])
        ewall, ecpu, _ = _process([py, "-c", "pass"])
        if i == 0:
            continue  # warm-up: file cache
        imports.append(float(dt))
        import_cpu.append(float(dc))
        heavy = ",".join(loaded)
        helps.append(wall)
        help_cpu.append(cpu)
        empties.append(ewall)
        empty_cpu.append(ecpu)
    med = statistics.median
    print(f"import covidscreen.cli: {med(imports):.3f} s wall (median of {n}; min {min(imports):.3f} s), "
          f"{med(import_cpu):.3f} s CPU; goal < 1 s")
    print(f"covidscreen --help process: {med(helps):.3f} s wall, {med(help_cpu):.3f} s CPU; empty interpreter "
          f"{med(empties):.3f} s wall, {med(empty_cpu):.3f} s CPU")
    print(f"heavy libraries loaded by --help: {heavy or 'none'}")
    try:
        print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    except OSError:
        pass


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
