"""``covidscreen predict``, ``explain`` and ``export``: use a trained run on files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import CovidscreenError
from .options import DeviceOpt

app = typer.Typer()


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    inputs: Annotated[list[str], typer.Argument(help="image files (PNG, JPEG, DICOM) or folders")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write .csv or .json")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    operating_point: Annotated[str, typer.Option(
        "--operating-point", help="named threshold of the run (chosen on validation): default, youden, "
        "sensitivity_0.95, specificity_0.95")] = "default",
    backend: Annotated[str, typer.Option("--backend", help="torch, or onnx (after covidscreen export)")] = "torch",
    device: DeviceOpt = "auto",
    mixed_precision: Annotated[bool, typer.Option(
        "--mixed-precision", help="bfloat16/float16 autocast on a GPU: faster, but its probabilities differ from "
        "the CPU's (by up to 0.08 on an H100); default: exact float32 on every device")] = False,
    expect_sha256: Annotated[str | None, typer.Option(
        "--expect-sha256", help="refuse the model unless its weights have this sha256 (a value you trust)")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="refuse the model unless a YAML/JSON list of allowed models names its sha256")] = None,
    strip: Annotated[bool, typer.Option(
        "--strip", help="screen each image for a backdoor trigger (STRIP; adds strip_entropy, strip_flag)")] = False,
) -> None:
    """Class probabilities and the decision at the run's operating point, one row per file."""
    from ..inference.predictor import Predictor
    from ..security.integrity import trusted_sha256
    from ..security.scan import predict_screened

    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise CovidscreenError(f"--output {output}: use a .csv or .json file name")
    predictor = Predictor(run_dir, device=device, operating_point=operating_point, backend=backend,
                          mixed_precision=mixed_precision, expected_sha256=trusted_sha256(run_dir, expect_sha256,
                                                                                          manifest))
    df = predict_screened(predictor, run_dir, inputs, strip=strip, batch_size=batch_size)
    if output is None:
        typer.echo(df.to_csv(index=False), nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".json":
            df.to_json(output, orient="records", indent=2)
        else:
            df.to_csv(output, index=False)
        typer.echo(f"{len(df)} file(s), {int((df['error'] != '').sum())} unreadable: {output}")


@app.command()
def export(run_dir: Annotated[Path, typer.Argument(help="run folder written by train")]) -> None:
    """Export a run to ONNX (model.onnx, checked against PyTorch) for onnxruntime CPU inference."""
    from ..inference.onnx import export_onnx

    typer.echo(f"wrote {export_onnx(run_dir)}")


@app.command()
def explain(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    inputs: Annotated[list[str], typer.Argument(help="image files (PNG, JPEG, DICOM) or folders")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the PNGs, CSV, JSON, contact sheet")],
    method: Annotated[str, typer.Option("--method", help="gradcam, gradcam++, scorecam (one forward pass per "
                                        "channel: minutes per image on a CPU) or eigencam")] = "gradcam",
    target: Annotated[str | None, typer.Option("--class", help="class to explain (default: most probable)")] = None,
    checks: Annotated[int, typer.Option("--checks", help="sanity-check the first N images (0: none)")] = 4,
    device: DeviceOpt = "auto",
) -> None:
    """Heatmaps (Grad-CAM family) of a trained run on images, with sanity checks and the border-fraction score."""
    from ..workflows.explain import explain_files

    table = explain_files(run_dir, inputs, output, method=method, target=target, checks=checks, device=device)
    sheet = output / "index.html"
    typer.echo(f"{len(table)} image(s) explained: {sheet if sheet.is_file() else output / table['png'].iloc[0]}")
