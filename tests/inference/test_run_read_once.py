"""A run is read once: only ``inference/run.py`` reads (or rewrites) a run's record, everything else takes the typed
``Run``. The check walks the syntax tree of every module of the package; it is tested on snippets that break each
rule, so that it cannot pass by finding nothing."""

import ast
from pathlib import Path

import pytest

import covidscreen

PACKAGE = Path(covidscreen.__file__).parent
LOADER = "inference/run.py"
# where the record files are defined and first written (the checkpoint writer, the ensemble manifest writer)
FORMAT_MODULES = {LOADER, "inference/checkpoint.py", "inference/ensemble.py"}
# functions that read or rewrite a raw record: only the loader calls them
RAW_ACCESS = {"read_model_sidecar", "read_manifest", "read_sidecar", "load_model_weights", "write_sidecar",
              "write_record"}
RECORD_NAMES = ("model.json", "ensemble.json")
RECORD_CONSTANTS = {"SIDECAR_FILE", "ENSEMBLE_FILE"}


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def violations(source: str, module: str) -> list[str]:
    """What ``module`` (a path relative to the package) does against the rule, one line each."""
    tree = ast.parse(source)
    found = []
    docs = _docstrings(tree)
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Call) and module != LOADER:
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in RAW_ACCESS:
                found.append(f"{module}:{line} calls {name} (read the typed Run: inference.run.load_run)")
        if isinstance(node, ast.Attribute) and node.attr == "sidecar" and module != LOADER:
            found.append(f"{module}:{line} reads Run.sidecar (add a typed field to Run instead)")
        if module in FORMAT_MODULES:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and any(
                name in node.value for name in RECORD_NAMES):
            found.append(f"{module}:{line} names a run's record file {node.value!r}")
        if isinstance(node, ast.ImportFrom) and any(a.name in RECORD_CONSTANTS for a in node.names):
            found.append(f"{module}:{line} imports the record file's name")
    return found


def test_no_module_but_the_run_loader_reads_a_runs_record():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).as_posix()
        found += violations(path.read_text(), module)
    assert not found, "a run's record is read outside inference/run.py:\n" + "\n".join(found)


@pytest.mark.parametrize("snippet, why", [
    ("from ..inference.checkpoint import read_model_sidecar\nmeta = read_model_sidecar(d)", "calls read_model_sidecar"),
    ("meta = run.sidecar.get('best_epoch')", "reads Run.sidecar"),
    ("best = read_optional_json(run_dir / 'model.json')", "names a run's record file"),
    ("x = json.loads((d / f'ensemble.json').read_text())", "names a run's record file"),
    ("from ..inference.checkpoint import SIDECAR_FILE", "imports the record file's name"),
    ("from ..inference.run import write_record\nwrite_record(d, meta)", "calls write_record"),
])
def test_the_check_finds_each_way_of_reading_the_record(snippet, why):
    assert any(why in v for v in violations(snippet, "reporting/example.py"))


def test_the_loader_and_docstrings_may_name_the_record():
    assert violations('"""Reads model.json."""\nmeta = read_model_sidecar(d)\nx = run.sidecar', LOADER) == []
    assert violations('def f():\n    """Writes model.json."""\n', "workflows/example.py") == []
