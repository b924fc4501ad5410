"""Exactly one result per image: the node is killed (SIGKILL, by its own fault hook: no timing race) at each step of
receiving, scoring and sending, started again, and a real Orthanc must then hold exactly one SR and one heatmap for
the image (SR, Secondary Capture, Segmentation: one of each), every time."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
from pathlib import Path

import pytest

from covidscreen.dicomnet import AeAddress
from covidscreen.dicomnet.faults import ENV, POINTS
from covidscreen.dicomnet.scu import echo
from tests.conftest import LIVENESS_S

from . import launcher
from .conftest import free_port
from .launcher import ForkedCommand
from .orthanc import ORTHANC_AET, Orthanc, dciodvfy, distinct_copies, require_pacs_tools

pytestmark = pytest.mark.slow

#: every point, and for the points each result item passes on its own way out, the second item's (the heatmap's)
CASES = [p for p in POINTS] + ["send-intent:2", "send-stored:2", "send-done:2"]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    require_pacs_tools()
    folder = tmp_path_factory.mktemp("orthanc_exactly_once")
    node_port = free_port()
    orthanc = Orthanc(folder, node_port, free_port(), free_port()).start()
    orthanc.node_port = node_port
    yield orthanc
    orthanc.stop()


def start_node(run_dir: Path, pacs: Orthanc, workdir: Path, db: str, fault: str | None) -> ForkedCommand:
    """``covidscreen dicom-node`` in a new process (forked from a server that imported the CLI: ``launcher.py``),
    once it answers C-ECHO."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if fault:
        env[ENV] = fault
    argv = ["dicom-node", str(run_dir), "--port", str(pacs.node_port),
            "--forward-to", f"127.0.0.1:{pacs.dicom_port}:{ORTHANC_AET}", "--workdir", str(workdir), "--db", db,
            "--device", "cpu"]
    proc = launcher.start(argv, env, workdir.parent / f"node-{fault or 'clean'}.log".replace(":", "_"))
    end = time.monotonic() + LIVENESS_S  # a bound only a hung node reaches (importing torch takes minutes at load 30)
    while not echo(AeAddress("127.0.0.1", pacs.node_port, "COVIDSCREEN"), "TEST", 5):
        assert proc.poll() is None, Path(proc.log_path).read_text()
        assert time.monotonic() < end, f"the node did not answer C-ECHO within {LIVENESS_S:.0f} s"
        time.sleep(0.2)
    return proc


def store_from_orthanc(pacs: Orthanc, instance: str) -> bool:
    """Orthanc C-STOREs the image to the node; False when the node did not answer success."""
    try:
        pacs.post("/modalities/covidscreen/store", {"Resources": [instance], "Synchronous": True})
        return True
    except urllib.error.HTTPError:
        return False


def results_in_study(pacs: Orthanc, study: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for series in pacs.series_of_study(study):
        out.setdefault(series["MainDicomTags"]["Modality"], []).extend(series["Instances"])
    return out


def settled(workdir: Path) -> bool:
    """Nothing left to score or send."""
    spool = list((workdir / "spool").glob("*.dcm")) if (workdir / "spool").is_dir() else []
    outbox = [p for p in (workdir / "outbox").glob("*") if not p.name.startswith(".")] \
        if (workdir / "outbox").is_dir() else []
    return not spool and not outbox


def stop(proc: ForkedCommand) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=LIVENESS_S)
    return Path(proc.log_path).read_text(errors="replace")


@pytest.mark.parametrize("fault", CASES)
def test_a_kill_at_any_step_leaves_exactly_one_sr_and_one_heatmap(fault, pacs, tiny_run, shared_dicoms, tmp_path):
    (image,) = distinct_copies(shared_dicoms[:1], tmp_path / "input")
    up = pacs.upload(image)
    workdir, db = tmp_path / "node", f"sqlite:///{tmp_path / 'audit.sqlite'}"
    workdir.mkdir()
    node = start_node(tiny_run, pacs, workdir, db, fault)
    stored = store_from_orthanc(pacs, up["ID"])
    assert node.wait(timeout=LIVENESS_S) == -signal.SIGKILL, f"the node did not stop itself at {fault}: {stop(node)}"
    assert stored == (fault != "spooled"), "the C-STORE is answered only after the image is spooled"

    again = start_node(tiny_run, pacs, workdir, db, None)
    try:
        if not stored:  # the PACS saw a failed send: it sends again (Orthanc's job retry, or a person)
            assert store_from_orthanc(pacs, up["ID"])
        study, end = up["ParentStudy"], time.monotonic() + LIVENESS_S
        while not (settled(workdir) and len(pacs.series_of_study(study)) >= 4):
            assert again.poll() is None, Path(again.log_path).read_text()
            assert time.monotonic() < end, f"not delivered after the restart: {results_in_study(pacs, study)}"
            time.sleep(0.2)
    finally:
        log = stop(again)
    got = results_in_study(pacs, up["ParentStudy"])
    assert {k: len(v) for k, v in got.items()} == {"CR": 1, "SR": 1, "OT": 1, "SEG": 1}, log
    if fault.startswith("send-stored"):  # the PACS had it: the in-doubt check found it and did not send it again
        assert "holds it already: not sent again" in log
    for modality in ("SR", "OT", "SEG"):
        path = tmp_path / f"{modality}.dcm"
        path.write_bytes(pacs.get(f"/instances/{got[modality][0]}/file"))
        assert dciodvfy(path) == []
