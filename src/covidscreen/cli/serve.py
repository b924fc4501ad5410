"""``covidscreen serve`` and ``covidscreen audit-log``: the second-reader service and its audit log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import AllowFlaggedOpt, DeviceOpt

app = typer.Typer()


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="run or ensemble folder")],
    host: Annotated[str, typer.Option("--host", help="bind address; 0.0.0.0 exposes it to the network")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8000,
    backend: Annotated[str, typer.Option("--backend", help="torch, onnx, or auto (onnx when model.onnx exists)")]
    = "auto",
    db: Annotated[str | None, typer.Option("--db", help="audit log: sqlite:///PATH or postgresql://USER@HOST/DB "
                                           "(default: audit_log.sqlite in the run folder)")] = None,
    api_key_file: Annotated[Path | None, typer.Option("--api-key-file", help="file of accepted API keys, one per "
                                                      "line; without it no key is asked")] = None,
    operating_point: Annotated[str, typer.Option("--operating-point", help="default operating point")] = "default",
    device: DeviceOpt = "auto",
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", help="largest request body")] = 32.0,
    max_files: Annotated[int, typer.Option("--max-files", help="most files per request")] = 20,
    max_pixels: Annotated[int, typer.Option("--max-pixels", help="most pixels per image")] = 60_000_000,
    max_queue: Annotated[int, typer.Option("--max-queue", help="images in progress before answering 503")] = 64,
    max_batch: Annotated[int, typer.Option("--max-batch", help="most images per forward pass")] = 16,
    batch_wait_ms: Annotated[float, typer.Option("--batch-wait-ms", help="wait for images of other requests")]
    = 10.0,
    expect_sha256: Annotated[str | None, typer.Option(
        "--expect-sha256", help="refuse to start unless the weights have this sha256 (a value you trust)")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="refuse to start unless a YAML/JSON list of allowed models names the run's sha256")] = None,
    strip: Annotated[bool, typer.Option(
        "--strip", help="screen each image for a backdoor trigger (STRIP: 32 extra forward passes per image; adds "
        "strip_entropy, strip_flag and a warning when flagged)")] = False,
    strip_frr: Annotated[float, typer.Option("--strip-frr", help="STRIP's false-rejection rate on clean validation "
                                             "images")] = 0.01,
    require_commissioning: Annotated[str | None, typer.Option(
        "--require-commissioning", help="refuse to start unless the run holds a 'go' site commissioning record of "
        "this name (covidscreen commission ... --name NAME)")] = None,
    allow_flagged_model: AllowFlaggedOpt = False,
) -> None:
    """Serve a run over HTTP as a second reader: API under /v1 (OpenAPI at /docs), web page at /, audit log."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..serving.config import ServeConfig
    from ..serving.server import serve_job

    cfg = ServeConfig(run_dir=run_dir, host=host, port=port, backend=backend, db=db, api_key_file=api_key_file,
                      device=device, max_upload_mb=max_upload_mb, max_files=max_files, max_pixels=max_pixels,
                      max_queue=max_queue, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                      operating_point=operating_point, expect_sha256=expect_sha256, manifest=manifest, strip=strip,
                      strip_frr=strip_frr, allow_flagged_model=allow_flagged_model)
    serve_job(cfg, require_commissioning, say=typer.echo)


@app.command("audit-log")
def audit_log(
    run_or_db: Annotated[str, typer.Argument(help="run folder, SQLite file or database URL of the audit log")],
    since: Annotated[str | None, typer.Option("--since", help="first day, YYYY-MM-DD (UTC)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="day after the last, YYYY-MM-DD (UTC)")] = None,
    csv: Annotated[Path | None, typer.Option("--csv", help="export the records to this CSV file")] = None,
) -> None:
    """Summarise the audit log per day (decisions, warnings, drift) and list or export its records."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..serving.server import audit_log_report

    for line in audit_log_report(run_or_db, since=since, until=until, csv=csv):
        typer.echo(line)
