"""``covidscreen dicom-node``, ``dicom-send``, ``dicomweb-watch`` and ``dicom-outbox``: covidscreen on the DICOM
network, by DIMSE or DICOMweb (thin: parse the options, call :mod:`covidscreen.dicomnet`, print)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Annotated, Protocol

import typer

from .options import AllowFlaggedOpt, DeviceOpt

app = typer.Typer()

RunArg = Annotated[Path, typer.Argument(help="run or ensemble folder")]
DbOpt = Annotated[str | None, typer.Option("--db", help="audit-log database URL or file (default: in RUN_DIR)")]
UidRootOpt = Annotated[str | None, typer.Option("--uid-root", help="organisation UID root for the new UIDs")]
PointOpt = Annotated[str, typer.Option("--operating-point", help="decision threshold (default: the run's)")]
AetOpt = Annotated[str, typer.Option("--ae-title", help="this node's AE title")]
NoHeatmapOpt = Annotated[bool, typer.Option("--no-heatmap", help="send the SR only, no Grad-CAM image")]
AuthOpt = Annotated[str | None, typer.Option("--auth", help="DICOMweb credentials: USER:PASSWORD, bearer:TOKEN or "
                                             "env:NAME (a variable holding either)")]
TimeoutOpt = Annotated[float, typer.Option("--timeout", min=1.0, help="seconds to wait for each PACS request or "
                                           "association before it counts as failed (the results stay in the outbox)")]

outbox_app = typer.Typer(no_args_is_help=True, help="Results waiting for the PACS: list them, send them again.")
app.add_typer(outbox_app, name="dicom-outbox")


class _Outcome(Protocol):
    """What a sending command's job returns (``SendSummary``, ``WatchSummary``, ``ResendOutcome``)."""

    def warnings(self) -> list[str]: ...
    def summary(self) -> str: ...
    def failure(self) -> str | None: ...


def _echo_outcome(outcome: _Outcome) -> None:
    """Warnings to standard error, the summary to standard output, and the failure, if any, to standard error with
    exit code 1."""
    for line in outcome.warnings():
        typer.echo(line, err=True)
    typer.echo(outcome.summary())
    if outcome.failure() is not None:
        typer.echo(outcome.failure(), err=True)
        raise typer.Exit(1)


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@app.command("dicom-node")
def dicom_node(
    run_dir: RunArg,
    ae_title: AetOpt = "COVIDSCREEN",
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="DICOM port")] = 11112,
    forward_to: Annotated[str | None, typer.Option("--forward-to", help="PACS for the results: HOST:PORT:AET")] = None,
    db: DbOpt = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="spool and outbox (default RUN_DIR/dicomnet)")
                       ] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="images waiting to be scored; 0xA700 past it")] = 16,
    batch_size: Annotated[int, typer.Option("--batch-size", help="images per forward pass")] = 4,
    no_heatmap: NoHeatmapOpt = False,
    operating_point: PointOpt = "default",
    uid_root: UidRootOpt = None,
    device: DeviceOpt = "auto",
    require_commissioning: Annotated[str | None, typer.Option(
        "--require-commissioning", help="refuse to start unless the run holds a 'go' site commissioning record of "
        "this name (covidscreen commission ... --name NAME)")] = None,
    allow_flagged_model: AllowFlaggedOpt = False,
) -> None:
    """Receive CR/DX images over DICOM (C-STORE SCP), score them, file an SR and a heatmap into their study."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..dicomnet import AeAddress, NodeConfig
    from ..dicomnet.node import node_job

    _logging()
    cfg = NodeConfig(run_dir, ae_title=ae_title, host=host, port=port, workdir=workdir, db=db,
                     forward_to=AeAddress.parse(forward_to) if forward_to else None, max_queue=max_queue,
                     batch_size=batch_size, heatmap=not no_heatmap, operating_point=operating_point,
                     uid_root=uid_root, device=device, allow_flagged_model=allow_flagged_model)
    node_job(cfg, require_commissioning, say=typer.echo)


@app.command("dicom-send")
def dicom_send(
    run_dir: RunArg,
    files: Annotated[list[Path], typer.Argument(help="DICOM files or folders")],
    to: Annotated[str | None, typer.Option("--to", help="PACS: HOST:PORT:AET (C-STORE)")] = None,
    dicomweb: Annotated[str | None, typer.Option("--dicomweb", help="or a DICOMweb root URL (STOW-RS)")] = None,
    auth: AuthOpt = None,
    ae_title: AetOpt = "COVIDSCREEN",
    db: DbOpt = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="outbox (default RUN_DIR/dicomnet/outbox)")
                       ] = None,
    no_heatmap: NoHeatmapOpt = False,
    operating_point: PointOpt = "default",
    uid_root: UidRootOpt = None,
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Score local DICOM files and store their results (SR, heatmap) in a PACS."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..dicomnet.send import send_job

    summary = send_job(run_dir, files, to, dicomweb, auth, timeout_s=timeout, workdir=workdir, db=db,
                       calling_aet=ae_title, heatmap=not no_heatmap, operating_point=operating_point,
                       uid_root=uid_root, device=device)
    _echo_outcome(summary)


@app.command("dicomweb-watch")
def dicomweb_watch(
    run_dir: RunArg,
    url: Annotated[str, typer.Option("--url", help="DICOMweb root, e.g. http://orthanc:8042/dicom-web")],
    auth: AuthOpt = None,
    once: Annotated[bool, typer.Option("--once", help="one pass, then exit")] = False,
    interval: Annotated[float, typer.Option("--interval", help="seconds between passes")] = 10.0,
    db: DbOpt = None,
    workdir: Annotated[Path | None, typer.Option("--workdir", help="marker and outbox (default RUN_DIR/dicomnet)")
                       ] = None,
    no_heatmap: NoHeatmapOpt = False,
    operating_point: PointOpt = "default",
    uid_root: UidRootOpt = None,
    device: DeviceOpt = "auto",
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Find new CR/DX images on a DICOMweb server (QIDO-RS), score them (WADO-RS), store results in their study
    (STOW-RS)."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..dicomnet.watch import dicomweb_watch as watch

    _logging()
    stop = threading.Event()
    try:
        summary = watch(run_dir, url, auth, workdir=workdir, db=db, once=once, interval_s=interval,
                        heatmap=not no_heatmap, operating_point=operating_point, uid_root=uid_root, device=device,
                        stop=stop, timeout_s=timeout)
    except KeyboardInterrupt:
        stop.set()
        return
    _echo_outcome(summary)


@outbox_app.command("list")
def outbox_list(folder: Annotated[Path, typer.Argument(help="run folder, node --workdir or outbox folder")]) -> None:
    """List the results the PACS has not confirmed yet."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..dicomnet.outbox import outbox_lines

    for line in outbox_lines(folder):
        typer.echo(line)


@outbox_app.command("resend")
def outbox_resend(
    folder: Annotated[Path, typer.Argument(help="run folder, node --workdir or outbox folder")],
    to: Annotated[str | None, typer.Option("--to", help="HOST:PORT:AET (default: each item's own)")] = None,
    ae_title: AetOpt = "COVIDSCREEN",
    auth: Annotated[str | None, typer.Option("--auth", help="for DICOMweb destinations: USER:PASSWORD, "
                                                            "bearer:TOKEN or env:NAME")] = None,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Send the pending results now; those still refused stay, with their error."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..dicomnet.outbox import resend_job

    _echo_outcome(resend_job(folder, to, ae_title, timeout_s=timeout, auth=auth))
