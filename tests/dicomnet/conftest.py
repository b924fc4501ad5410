"""Fixtures of the DICOM node tests: a tiny run folder (no training: seconds), free ports, a node and a sink SCP.

The run is an untrained ``mobilenet_v2_035`` at 64 px with a complete sidecar (classes, positive class, operating
points) and a ``metrics.json`` with validation sensitivity/specificity, which is everything the node reads: the
tests are about DICOM, not about what the model learned.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
import torch
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt

from covidscreen.inference.checkpoint import save_checkpoint
from covidscreen.models import create_model

SHARED_DICOMS = sorted((Path(__file__).resolve().parents[3] / "shared" / "data" / "dicom").glob("*.dcm"))
THRESHOLD = 0.31


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_run(run_dir: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model("mobilenet_v2_035", pretrained=False, num_classes=3)
    points = {"youden": THRESHOLD, "sensitivity_0.95": 0.12, "specificity_0.95": 0.55, "default": THRESHOLD}
    save_checkpoint(run_dir, model, {"classes": ["covid", "normal", "pneumonia"], "positive_class": "covid",
                                     "image_size": 64, "threshold": THRESHOLD, "operating_points": points,
                                     "temperature": 1.0, "seed": seed})
    val = {"youden": {"threshold": THRESHOLD, "sensitivity": 0.875, "specificity": 0.8125},
           "sensitivity_0.95": {"threshold": 0.12, "sensitivity": 0.95, "specificity": 0.5},
           "specificity_0.95": {"threshold": 0.55, "sensitivity": 0.6, "specificity": 0.95},
           "default": {"threshold": THRESHOLD, "sensitivity": 0.875, "specificity": 0.8125}}
    (run_dir / "metrics.json").write_text(json.dumps({"operating_points_val": val}))
    return run_dir


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return write_tiny_run(tmp_path_factory.mktemp("dicomnet_run") / "run")


@pytest.fixture(scope="session")
def shared_dicoms(shared_data) -> list[Path]:
    files = sorted((shared_data / "dicom").glob("*.dcm"))
    if not files:
        pytest.fail(f"no DICOM files in {shared_data / 'dicom'}")
    return files


class Sink:
    """A pynetdicom storage SCP standing in for a PACS: keeps what it receives; can be stopped and restarted."""

    def __init__(self, ae_title: str = "PACS") -> None:
        self.ae_title = ae_title
        self.port = free_port()
        self.received: list = []
        self.lock = threading.Lock()
        self.server = None

    def _on_store(self, event):
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def start(self) -> Sink:
        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}:{self.ae_title}"


@pytest.fixture()
def sink():
    s = Sink()
    yield s
    s.stop()


@pytest.fixture()
def make_node(tiny_run, tmp_path):
    """``make_node(**config)``: a started node on a free port (stopped after the test)."""
    from covidscreen.dicomnet import DicomNode, NodeConfig

    nodes = []

    def make(**kw):
        kw.setdefault("workdir", tmp_path / "node")
        kw.setdefault("db", f"sqlite:///{tmp_path / 'audit.sqlite'}")
        kw.setdefault("device", "cpu")
        kw.setdefault("port", free_port())
        kw.setdefault("retry_min_s", 0.2)
        kw.setdefault("retry_max_s", 0.5)
        node = DicomNode(NodeConfig(kw.pop("run_dir", tiny_run), **kw)).start()
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        n.stop()


def scu_store(port: int, datasets, ae_title: str = "COVIDSCREEN", calling: str = "TESTSCU") -> list[int]:
    """C-STORE each dataset (or file path) in one association; the DIMSE status of each (-1: no answer)."""
    import pydicom

    ae = AE(ae_title=calling)
    contexts = set()
    for ds in datasets:
        if isinstance(ds, str | Path):  # sent as its bytes are: only the file meta is read
            meta = pydicom.filereader.read_file_meta_info(ds)
            contexts.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
        else:
            contexts.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    for sop_class, syntax in sorted(contexts):
        ae.add_requested_context(sop_class, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established, "the node refused the association"
    out = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            out.append(int(status.Status) if status is not None and "Status" in status else -1)
    finally:
        assoc.release()
    return out
