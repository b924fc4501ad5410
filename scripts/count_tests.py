"""Count the tests and the assert statements of a checkout: the suite may get faster, never smaller.

    python scripts/count_tests.py [REPO]     # prints: tests N, assert statements M, files K

Tests: what ``pytest --collect-only -q`` collects (every parametrised case counts); asserts: ``assert`` statements
in the Python files under ``tests/`` (read with the ``ast`` module, so comments and strings do not count). Run it on
the tree before and after a change of the test suite (``git archive REV | tar -x -C DIR`` gives an old tree).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path


def count_asserts(tests: Path) -> tuple[int, int]:
    """(assert statements, Python files) under ``tests``."""
    files = sorted(tests.rglob("*.py"))
    n = sum(isinstance(node, ast.Assert) for f in files for node in ast.walk(ast.parse(f.read_text(), str(f))))
    return n, len(files)


def count_tests(repo: Path) -> int:
    """The number of tests pytest collects in ``repo`` (its own ``src`` first on the path)."""
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          "-p", "no:xdist"], cwd=repo, env=env, capture_output=True, text=True, timeout=600)
    found = re.search(r"^(\d+) tests? collected", out.stdout, re.MULTILINE)
    if out.returncode != 0 or not found:
        raise SystemExit(f"error: pytest --collect-only failed in {repo} (rc {out.returncode}):\n{out.stdout[-2000:]}"
                         f"\n{out.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    repo = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve()
    asserts, files = count_asserts(repo / "tests")
    print(f"tests {count_tests(repo)}, assert statements {asserts}, files {files}")


if __name__ == "__main__":
    main()
