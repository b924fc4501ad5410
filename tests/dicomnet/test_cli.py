"""The DICOM commands (``cli/dicomnet.py``): ``dicom-node`` as a user starts it (a process, stopped with Ctrl-C),
``dicom-send`` and ``dicom-outbox``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from covidscreen.cli import app
from covidscreen.dicomnet import AeAddress
from covidscreen.dicomnet.scu import echo
from tests.conftest import LIVENESS_S
from tests.test_cli import run_cli_in_process

from .conftest import Sink, free_port, scu_store

runner = CliRunner()


def test_dicom_node_process_scores_and_stops_on_ctrl_c(tiny_run, shared_dicoms, sink, tmp_path):
    sink.start()
    port = free_port()
    cmd = [sys.executable, "-m", "covidscreen", "dicom-node", str(tiny_run), "--port", str(port), "--forward-to",
           sink.address, "--workdir", str(tmp_path / "w"), "--db", f"sqlite:///{tmp_path / 'a.sqlite'}",
           "--device", "cpu"]
    # the node must see Ctrl-C even where this test runs with SIGINT ignored (nohup, `&` in a script)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        end = time.monotonic() + LIVENESS_S
        while not echo(AeAddress("127.0.0.1", port, "COVIDSCREEN"), "TEST", 5) and time.monotonic() < end:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.3)
        assert scu_store(port, shared_dicoms[:1]) == [0x0000]
        while len(sink.received) < 3 and time.monotonic() < end:
            time.sleep(0.1)
        assert sorted(ds.Modality for ds in sink.received) == ["OT", "SEG", "SR"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=LIVENESS_S)
    assert proc.returncode == 0, out
    assert f"listening on 127.0.0.1:{port}" in out


def test_dicom_send_and_outbox_commands(tiny_run, shared_dicoms, tmp_path):
    pacs = Sink()
    db = f"sqlite:///{tmp_path / 'a.sqlite'}"
    res = runner.invoke(app, ["dicom-send", str(tiny_run), str(shared_dicoms[0]), "--to", pacs.address, "--workdir",
                              str(tmp_path / "outbox"), "--db", db, "--device", "cpu", "--no-heatmap"])
    assert res.exit_code == 1 and "dicom-outbox resend" in res.output
    res = runner.invoke(app, ["dicom-outbox", "list", str(tmp_path / "outbox")])
    assert res.exit_code == 0 and "1 pending" in res.output and "attempts 1" in res.output
    pacs.start()
    try:
        res = runner.invoke(app, ["dicom-outbox", "resend", str(tmp_path / "outbox")])
        assert res.exit_code == 0 and "sent 1" in res.output
        assert [ds.Modality for ds in pacs.received] == ["SR"]
    finally:
        pacs.stop()
    res = runner.invoke(app, ["dicom-outbox", "list", str(tmp_path / "outbox")])
    assert res.exit_code == 0 and "0 pending" in res.output
    # through main() in this process (dicom-send's subprocess run: dicomnet/test_dicomweb.py)
    bad = run_cli_in_process("dicom-send", str(tiny_run), str(shared_dicoms[0]), "--to", "nonsense")
    assert bad.returncode == 2 and bad.stderr.startswith("error: destination 'nonsense' is invalid")
    assert "HOST:PORT:AET" in bad.stderr and "Traceback" not in bad.stderr
