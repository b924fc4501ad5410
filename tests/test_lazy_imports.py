"""Imports sit at the top of a module; one inside a function must say why on its line or the line above (one reason
per block of imports): keeping ``covidscreen --help`` or a command's start-up fast, or an optional dependency
optional (docs/architecture.md, "Ground rules"). The check is tested on snippets, so that it cannot pass by finding
nothing."""

import ast
import subprocess
import sys
from pathlib import Path

import covidscreen

PACKAGE = Path(covidscreen.__file__).parent


def unexplained(source: str) -> list[int]:
    """Line numbers of function-level imports with no reason comment on their block."""
    lines = source.split("\n")
    found = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            start = node.lineno - 1
            while start > 0 and lines[start - 1].strip().startswith(("import ", "from ")):
                start -= 1
            if "#" not in lines[start] and not lines[start - 1].strip().startswith("#") and not any(
                    "#" in lines[i] for i in range(start, node.lineno)):
                found.append(node.lineno)
    return found


def test_every_import_inside_a_function_says_why():
    found = [f"{p.relative_to(PACKAGE)}:{n}" for p in sorted(PACKAGE.rglob("*.py")) for n in unexplained(p.read_text())]
    assert not found, "imports inside functions without a reason comment:\n" + "\n".join(found)


def test_the_check_finds_an_unexplained_import_and_accepts_a_reason():
    assert unexplained("def f():\n    import timm\n    return timm\n") == [2]
    assert unexplained("def f():\n    # optional dependency\n    import onnxruntime\n    from x import y\n") == []
    assert unexplained("def f():\n    import onnxruntime  # optional dependency\n") == []


def test_help_imports_no_heavy_library():
    """``covidscreen --help`` imports neither PyTorch nor the other heavy libraries (its time: benchmarks/
    bench_cli_import.py prints it; no timed assertion here)."""
    code = ("import sys, covidscreen.cli; heavy = ('torch', 'numpy', 'pandas', 'timm', 'cv2', 'matplotlib', 'sklearn',"
            " 'pydicom'); print(','.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
