"""Command-line interface: parses options, calls library functions, prints where results are.

Errors caused by input (``CovidscreenError``) print one line and exit with code 2; nothing here computes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from .errors import CovidscreenError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="COVID-19 / pneumonia screening on chest X-rays by transfer learning, evaluated honestly.")

DataOpt = Annotated[str | None, typer.Option("--data", help="data folder (metadata.csv or <label>/ tree)")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N")]


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", "-o", help="run folder to write")] = Path("runs/quickstart"),
    data: DataOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Fine-tune the default model on the shared chest X-rays, evaluate it on a held-out test split, write a report."""
    from .config import resolve_train_config
    from .training.trainer import fit

    cfg = resolve_train_config(None, data=data, output=str(output), device=device)
    run = fit(cfg)
    typer.echo(f"report: {run / 'report.html'}")


@app.command()
def train(
    data: DataOpt = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML file overriding defaults")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="registry or timm model name")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="run folder to write")] = None,
    epochs: Annotated[int | None, typer.Option(help="number of epochs")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", help="square input side in pixels")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="peak learning rate (AdamW)")] = None,
    train_stages: Annotated[int | None, typer.Option("--train-stages", help="train only the last k stages")] = None,
    full_finetune: Annotated[bool, typer.Option("--full-finetune", help="train every stage")] = False,
    samples_per_epoch: Annotated[int | None, typer.Option("--samples-per-epoch")] = None,
    max_per_class: Annotated[int | None, typer.Option("--max-per-class", help="use at most N images per class")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="local pretrained weights file")] = None,
    no_pretrained: Annotated[bool, typer.Option("--no-pretrained", help="random initialisation")] = False,
    no_class_weights: Annotated[bool, typer.Option("--no-class-weights")] = False,
    no_augment: Annotated[bool, typer.Option("--no-augment")] = False,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N")] = None,
) -> None:
    """Fine-tune a model on a data folder and write a run folder (checkpoint, metrics, report)."""
    from .config import resolve_train_config
    from .training.trainer import fit

    cli = dict(data=data, model=model, output=str(output) if output else None, epochs=epochs, image_size=image_size,
               batch_size=batch_size, lr=lr, train_stages=train_stages, samples_per_epoch=samples_per_epoch,
               max_per_class=max_per_class, weights=weights, seed=seed, device=device)
    if no_pretrained:
        cli["pretrained"] = False
    if no_class_weights:
        cli["class_weights"] = False
    if no_augment:
        cli["augment"] = False
    cfg = resolve_train_config(config, **cli)
    if full_finetune:
        import dataclasses

        cfg = dataclasses.replace(cfg, train_stages=None)
    run = fit(cfg)
    typer.echo(f"report: {run / 'report.html'}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    data: DataOpt = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for this evaluation")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """Metrics of a trained run on its test split, or on another data folder (external validation)."""
    from .evaluation.evaluate import evaluate_run

    out = evaluate_run(run_dir, data=data, output=output, device=device)
    import json

    m = json.loads((out / "metrics.json").read_text())
    if "covid_vs_rest" in m:
        cv = m["covid_vs_rest"]
        typer.echo(f"{m['n_test']} images: {m['positive_class']}-vs-rest ROC AUC {cv['roc_auc']:.4f}, sensitivity "
                   f"{cv['sensitivity']:.3f}, specificity {cv['specificity']:.3f}")
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def predict(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    inputs: Annotated[list[str], typer.Argument(help="image files (PNG, JPEG, DICOM) or folders")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write .csv or .json")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
    operating_point: Annotated[str, typer.Option("--operating-point", help="named threshold of the run")] = "default",
    device: DeviceOpt = "auto",
) -> None:
    """Class probabilities and the decision at the run's operating point, one row per file."""
    from .inference.predictor import Predictor

    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise CovidscreenError(f"--output {output}: use a .csv or .json file name")
    predictor = Predictor(run_dir, device=device, operating_point=operating_point)
    df = predictor.predict_files(inputs, batch_size=batch_size)
    if output is None:
        typer.echo(df.to_csv(index=False), nl=False)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".json":
            df.to_json(output, orient="records", indent=2)
        else:
            df.to_csv(output, index=False)
        typer.echo(f"{len(df)} file(s), {int((df['error'] != '').sum())} unreadable: {output}")


@app.command("models")
def list_models_cmd() -> None:
    """List the registry's models with their pretrained-weight sources."""
    from .models.registry import MODEL_SPECS

    for name, spec in sorted(MODEL_SPECS.items()):
        typer.echo(f"{name:22s} weights: {spec.weights:60s} gradcam: {spec.gradcam_layer}")


# --- issue 6: lung segmentation, local calibration, generalisation grid (begin) ---
segment_app = typer.Typer(no_args_is_help=True, help="Lung segmentation (used by the --roi preprocessing options).")
app.add_typer(segment_app, name="segment")


@segment_app.command("train")
def segment_train(
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the segmentation checkpoint")],
    data: DataOpt = None,
    encoder: Annotated[str, typer.Option(help="registry encoder: mobilenet_v2_035 or efficientnet_lite0")]
    = "mobilenet_v2_035",
    image_size: Annotated[int, typer.Option("--image-size", help="square side, a multiple of 32")] = 160,
    epochs: Annotated[int, typer.Option(help="number of epochs")] = 30,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 16,
    lr: Annotated[float, typer.Option("--lr")] = 2e-3,
    max_minutes: Annotated[float | None, typer.Option("--max-minutes", help="stop after this much time")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Train the lung segmenter on the images with a lung_mask (patient-grouped split) and report held-out Dice."""
    from .segmentation.train import SegmentConfig, train_segmenter

    cfg = SegmentConfig(data=data, output=str(output), encoder=encoder, image_size=image_size, epochs=epochs,
                        batch_size=batch_size, lr=lr, max_minutes=max_minutes, seed=seed, device=device)
    out = train_segmenter(cfg)
    typer.echo(f"segmentation checkpoint: {out}")


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    data: Annotated[str, typer.Option("--data", help="labelled local sample (metadata.csv or <label>/ folders)")],
    target_specificity: Annotated[float, typer.Option("--target-specificity", help="wanted local specificity")] = 0.9,
    name: Annotated[str, typer.Option("--name", help="name of the operating point to store")] = "local",
    temperature: Annotated[bool, typer.Option("--temperature", help="also fit a temperature (needs positives)")]
    = False,
    device: DeviceOpt = "auto",
) -> None:
    """Fit the operating threshold on a small labelled sample of your own site and store it in the run."""
    from .inference.calibration import calibrate_run, describe_calibration

    record = calibrate_run(run_dir, data, target_specificity=target_specificity, name=name, temperature=temperature,
                           device=device)
    for line in describe_calibration(record, name):
        typer.echo(line)
# --- issue 6 (end) ---


def main() -> None:
    try:
        app(standalone_mode=True)
    except CovidscreenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
