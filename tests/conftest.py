"""Shared fixtures: the shared data folder next to the checkout, and small synthetic data folders. And how the suite
runs in parallel (pytest-xdist, docs/testing.md): one torch thread per worker, tests grouped by file unless marked
with ``xdist_group``, the slow end-to-end files handed out first."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

try:  # pytest >= 9.2: structured node ids (see _group_suffix)
    from _pytest.nodeid import NodeId
except ImportError:  # pytest 8 - 9.1: xdist appends the group suffix itself
    NodeId = None

# fixtures shared by the tests of several packages (explain/, reporting/, workflows/; audit/, workflows/)
pytest_plugins = ["tests.explain_fixtures", "tests.audit_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
#: how long a test waits for a process, server, command or result before it calls it stuck: a bound that only a hung
#: process reaches, never a speed requirement (the shared 2-core machine runs at load 20-35 at times: a server that
#: imports torch takes minutes to start there, and `security backdoor` at its tiny budget ran past 300 s)
LIVENESS_S = 1800.0

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under pytest-xdist every worker gets one thread (two workers on two cores do not oversubscribe them), and so do
    # the subprocesses it starts (the environment is inherited): a test that compares an in-process run with a
    # subprocess run sums floats in the same order on both sides
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"
    torch.set_num_threads(1)


def pytest_configure(config):
    """Keep the order of ``pytest_collection_modifyitems`` (slow files first) when xdist hands out the groups: by
    default (``--loadscope-reorder``) it sorts them by their number of tests, which puts a file of many quick tests
    before a slow end-to-end file of two."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config, items):
    """``--dist loadgroup``: a test without an ``xdist_group`` mark goes with the other tests of its file (its
    module-scoped fixtures are built once, on one worker). The files with ``slow`` tests come first, so that the
    longest work starts at once and the short tests fill the gaps (the same order on every worker)."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
    if getattr(config.option, "loadgroup", False):  # an xdist worker under --dist loadgroup
        for item in items:
            _group_suffix(item)
    slow_files = {item.nodeid.split("::")[0] for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.nodeid.split("::")[0] not in slow_files)  # stable: file order kept otherwise


def _group_suffix(item) -> None:
    """Append ``@GROUP`` to the test's node id, as pytest-xdist's worker does to tell the scheduler the group.

    pytest 9.2 keeps node ids in ``Node._id`` (a structured ``NodeId``); xdist 3.8 still writes the old ``_nodeid``
    attribute, which pytest no longer reads, so every test became a group of its own (pytest-xdist issue #1386):
    the tests of a file were spread over both workers and interleaved with other files, and module-scoped fixtures
    were built again and again (the ensemble cross-validation's 69 s run twice). Done here where xdist's write is
    lost; where it works (older pytest, a fixed xdist) this leaves the id alone and xdist appends the suffix."""
    current = getattr(item, "_id", None)
    if NodeId is None or not isinstance(current, NodeId) or "@" in str(current).rpartition("]")[2]:
        return
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    if names:
        item._id = NodeId.parse(f"{current}@{'_'.join(names)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With ``COVIDSCREEN_TEST_CPU=FILE``: append each test's CPU seconds (this process and the subprocesses it
    waited for, setup and teardown included) to FILE, tab-separated; on a busy machine they say more than wall time."""
    path = os.environ.get("COVIDSCREEN_TEST_CPU")
    before = _cpu_seconds() if path else 0.0
    yield
    if path:
        with open(path, "a") as f:
            f.write(f"{_cpu_seconds() - before:.2f}\t{item.nodeid}\n")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = SHARED / "data"
    if not (path / "cxr" / "metadata.csv").is_file():
        pytest.fail(f"the shared data folder {path} is missing: tests read the real images from ../shared/data")
    return path


@pytest.fixture(autouse=True)
def _same_threads_after_each_test():
    """A test that changes torch's thread count must not change the numbers of the tests after it (float sums
    differ between 1 and 2 threads, and some tests compare an in-process run with a subprocess run)."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # every test session gets its own decode cache: tests never see stale caches from developers' runs
    monkeypatch.setenv("COVIDSCREEN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_image_folder(root: Path, n_per_class: int = 6, size: int = 48, classes=("covid", "normal"),
                      seed: int = 0) -> Path:
    """A tiny metadata.csv data folder whose classes differ by brightness (learnable in one epoch)."""
    rng = np.random.default_rng(seed)
    rows = []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for ci, label in enumerate(classes):
        for i in range(n_per_class):
            arr = (rng.random((size, size)) * 60 + 40 + 120 * ci).astype(np.uint8)
            name = f"images/{label}_{i}.png"
            Image.fromarray(arr).save(root / name)
            rows.append({"image": name, "label": label, "patient_id": f"p{label}{i // 2}", "site": "s1", "view": "PA"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root
