"""``covidscreen predict``, ``explain`` and ``export``: use a trained run on files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .options import DeviceOpt

app = typer.Typer()


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    inputs: Annotated[list[str], typer.Argument(help="image files (PNG, JPEG, DICOM) or folders")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write .csv (rows appended as they come) or "
                                                ".json")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="keep an existing --output CSV and skip the files it "
                                         "already holds")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    operating_point: Annotated[str, typer.Option(
        "--operating-point", help="named threshold of the run (chosen on validation): default (runs trained now: "
        "worst_site_specificity_0.9), youden, balanced_youden, worst_group, sensitivity_0.95, specificity_0.95, or a "
        "local point from covidscreen calibrate")] = "default",
    backend: Annotated[str, typer.Option("--backend", help="torch, onnx (after covidscreen export), or auto (onnx "
                                         "when the run has an export and onnxruntime is installed)")] = "torch",
    device: DeviceOpt = "auto",
    mixed_precision: Annotated[bool, typer.Option(
        "--mixed-precision", help="bfloat16/float16 autocast on a GPU (bfloat16 on a CPU with AMX or AVX-512 "
        "BF16): faster, but its probabilities differ from exact float32 ones (by up to 0.08 on an H100); default: "
        "exact float32 on every device")] = False,
    expect_sha256: Annotated[str | None, typer.Option(
        "--expect-sha256", help="refuse the model unless its weights have this sha256 (a value you trust)")] = None,
    manifest: Annotated[Path | None, typer.Option(
        "--manifest", help="refuse the model unless a YAML/JSON list of allowed models names its sha256")] = None,
    strip: Annotated[bool, typer.Option(
        "--strip", help="screen each image for a backdoor trigger (STRIP; adds strip_entropy, strip_flag)")] = False,
    ood_policy: Annotated[str, typer.Option(
        "--ood-policy", help="an image unlike the training images (in_distribution false): flag (still predicted) "
        "or abstain (prediction 'abstain', no probabilities)")] = "flag",
) -> None:
    """Class probabilities and the decision at the run's operating point, one row per file, with the
    out-of-distribution score and flag."""
    from ..workflows.predict import predict_files_job  # per command: `covidscreen --help` stays free of PyTorch

    screen = None
    if strip:
        from ..security.scan import strip_screen as screen  # per command, as above
    outcome = predict_files_job(run_dir, inputs, output, resume=resume, batch_size=batch_size,
                                operating_point=operating_point, backend=backend, device=device,
                                mixed_precision=mixed_precision, expect_sha256=expect_sha256, manifest=manifest,
                                screen=screen, ood_policy=ood_policy)
    typer.echo(outcome.text(), nl=False)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    int8: Annotated[bool, typer.Option("--int8", help="also quantise to INT8 (static QDQ, calibrated on training "
                                       "images of every site; the smallest float32 part (none, stem, head, then a "
                                       "growing region from the input) chosen on validation images); it serves "
                                       "only if the test ROC AUC drops <= 0.005 and <= 1% of test decisions "
                                       "change")] = False,
    calibration_images: Annotated[int, typer.Option("--calibration-images", min=1,
                                                    help="training images that set the INT8 ranges")] = 128,
) -> None:
    """Export a run to ONNX (model.onnx, checked against PyTorch) for onnxruntime CPU inference."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.quantize import export_job

    for line in export_job(run_dir, int8=int8, calibration_images=calibration_images):
        typer.echo(line)


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
    feature_maps: Annotated[str | None, typer.Option("--feature-maps", help="instead of heatmaps: a PNG grid of this "
                                                     "layer's activations per image (e.g. layer2, features.4)")] = None,
) -> None:
    """Heatmaps (Grad-CAM family) of a trained run on images, with sanity checks and the border-fraction score."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..workflows.explain import explain_job

    typer.echo(explain_job(run_dir, inputs, output, method=method, target=target, checks=checks, device=device,
                           feature_maps=feature_maps))
