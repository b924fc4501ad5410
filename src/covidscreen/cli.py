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
    holdout_site: Annotated[str | None, typer.Option(
        "--holdout-site", help="leave this site out of train/val/test; evaluate on it at the end")] = None,
    temperature_scaling: Annotated[bool, typer.Option(
        "--temperature-scaling", help="calibrate probabilities with a temperature fitted on validation")] = False,
    no_audit: Annotated[bool, typer.Option("--no-audit", help="skip the leakage/shortcut audit")] = False,
    # --- transfer-learning options (issue 3); every one is also a YAML key of the same name ---
    lr_decay: Annotated[float | None, typer.Option("--lr-decay", help="LR factor per stage below the head")] = None,
    head_warmup_epochs: Annotated[int | None, typer.Option("--head-warmup-epochs",
                                                           help="epochs of head-only training first")] = None,
    loss: Annotated[str | None, typer.Option("--loss", help="cross_entropy or focal")] = None,
    focal_gamma: Annotated[float | None, typer.Option("--focal-gamma")] = None,
    focal_alpha: Annotated[float | None, typer.Option("--focal-alpha", help="focal weight of the positive class")
                           ] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="random or balanced")] = None,
    mixup_alpha: Annotated[float | None, typer.Option("--mixup", help="mixup Beta alpha (0 = off)")] = None,
    cutmix_alpha: Annotated[float | None, typer.Option("--cutmix", help="CutMix Beta alpha (0 = off)")] = None,
    task: Annotated[str | None, typer.Option("--task", help="multiclass or binary (positive class vs rest)")] = None,
    init_from: Annotated[str | None, typer.Option("--init-from", help="start from the trunk of this run")] = None,
    folds: Annotated[int | None, typer.Option("--folds", help="patient-grouped k-fold cross-validation")] = None,
    train_fraction: Annotated[float | None, typer.Option("--train-fraction",
                                                         help="share of the training patients to use")] = None,
    split_seed: Annotated[int | None, typer.Option("--split-seed", help="seed of the split (default: --seed)")
                          ] = None,
) -> None:
    """Fine-tune a model on a data folder and write a run folder (checkpoint, metrics, report)."""
    from .config import resolve_train_config
    from .training.trainer import fit

    cli = dict(data=data, model=model, output=str(output) if output else None, epochs=epochs, image_size=image_size,
               batch_size=batch_size, lr=lr, train_stages=train_stages, samples_per_epoch=samples_per_epoch,
               max_per_class=max_per_class, weights=weights, seed=seed, device=device, holdout_site=holdout_site,
               lr_decay=lr_decay, head_warmup_epochs=head_warmup_epochs, loss=loss, focal_gamma=focal_gamma,
               focal_alpha=focal_alpha, sampler=sampler, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha,
               task=task, init_from=init_from, folds=folds, train_fraction=train_fraction, split_seed=split_seed)
    if temperature_scaling:
        cli["temperature_scaling"] = True
    if no_audit:
        cli["audit"] = False
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

    from .evaluation.external import drop_summary

    m = json.loads((out / "metrics.json").read_text())
    if "covid_vs_rest" in m:
        cv = m["covid_vs_rest"]
        ci = cv.get("ci", {})
        fmt = lambda k: f"{cv[k]:.3f}" + (f" (95% CI {ci[k][0]:.3f}-{ci[k][1]:.3f})" if k in ci else "")  # noqa: E731
        typer.echo(f"{m['n_test']} images: {m['positive_class']}-vs-rest ROC AUC {fmt('roc_auc')}, sensitivity "
                   f"{fmt('sensitivity')}, specificity {fmt('specificity')}")
    comparison = (m.get("internal_vs_external") or {}).get("comparison", [])
    for metric in ("roc_auc", "sensitivity", "specificity", "multi-class accuracy", "macro_roc_auc"):
        line = drop_summary(comparison, metric)
        if line:
            typer.echo(line)
    typer.echo(f"report: {out / 'report.html'}")


@app.command()
def audit(
    data_dir: Annotated[str, typer.Argument(help="data folder to audit (metadata.csv or <label>/ tree)")],
    run_dir: Annotated[Path | None, typer.Argument(help="run folder: audit its split and its model's features")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="folder for audit.json/audit.html "
                                                "(default: RUN_DIR, else ./audit-<data folder name>)")] = None,
    image_size: Annotated[int | None, typer.Option(
        "--image-size", help="side of the cached images (default: the run's input size, else 224)")] = None,
    pediatric_site: Annotated[list[str] | None, typer.Option(
        "--pediatric-site", help="a site whose images are all pediatric (repeatable), for the age probe")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: DeviceOpt = "auto",
) -> None:
    """Leakage (patients across splits, duplicates, near-duplicates), shortcut probe and label/site confounding."""
    from .audit import audit_data_dir
    from .audit.render import read_audit

    if image_size is not None and not 32 <= image_size <= 1024:
        raise CovidscreenError(f"--image-size {image_size}: use an integer from 32 to 1024")
    out = audit_data_dir(data_dir, run_dir, output, image_size=image_size, pediatric_sites=tuple(pediatric_site or ()),
                         device=device, seed=seed)
    for f in (read_audit(out) or {}).get("findings", []):
        typer.echo(f"[{f['severity']}] {f['text']}")
    typer.echo(f"audit: {out / 'audit.json'} | {out / 'audit.html'}")


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
) -> None:
    """Class probabilities and the decision at the run's operating point, one row per file."""
    from .inference.predictor import Predictor

    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise CovidscreenError(f"--output {output}: use a .csv or .json file name")
    predictor = Predictor(run_dir, device=device, operating_point=operating_point, backend=backend,
                          mixed_precision=mixed_precision)
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


@app.command()
def export(run_dir: Annotated[Path, typer.Argument(help="run folder written by train")]) -> None:
    """Export a run to ONNX (model.onnx, checked against PyTorch) for onnxruntime CPU inference."""
    from .inference.onnx import export_onnx

    typer.echo(f"wrote {export_onnx(run_dir)}")


# --- ensembles and experiments (issue 3) ---
@app.command()
def ensemble(
    run_dirs: Annotated[list[Path], typer.Argument(help="finished run folders (same classes and image size)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="ensemble folder to write")],
) -> None:
    """Average the probabilities of several runs; the folder is then used like one run (evaluate, predict)."""
    import json

    from .inference.ensemble import build_ensemble

    out = build_ensemble(run_dirs, output)
    metrics = out / "metrics.json"
    if metrics.is_file():
        cv = json.loads(metrics.read_text()).get("covid_vs_rest")
        if cv:
            typer.echo(f"ensemble of {len(run_dirs)} on the members' common test split: ROC AUC {cv['roc_auc']:.4f}, "
                       f"sensitivity {cv['sensitivity']:.3f}, specificity {cv['specificity']:.3f}")
        typer.echo(f"report: {out / 'report.html'}")
    else:
        typer.echo(f"ensemble of {len(run_dirs)} written to {out} (members were split differently: no common test "
                   "split; evaluate it with --data)")


@app.command()
def experiment(
    grid: Annotated[Path, typer.Argument(help="grid YAML file (see configs/)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="experiment folder (default from the file)")
                      ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="check the grid and list its runs, train nothing")] = False,
) -> None:
    """Run a grid of training configurations (resumable) and write a comparison table with confidence intervals."""
    from .training.experiment import load_plan, run_experiment

    plan = load_plan(grid, output)
    if dry_run:
        for r in plan.runs:
            typer.echo(f"{r.name}: {r.cfg.output}")
        for name, members in plan.ensembles.items():
            typer.echo(f"ensemble {name}: {', '.join(members)}")
        return
    out = run_experiment(grid, output)
    typer.echo(f"comparison: {out / 'comparison.html'} ({out / 'comparison.csv'})")
# --- end ensembles and experiments ---


# --- explain (issue 5) ---
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
    from .explain.files import explain_files

    table = explain_files(run_dir, inputs, output, method=method, target=target, checks=checks, device=device)
    sheet = output / "index.html"
    typer.echo(f"{len(table)} image(s) explained: {sheet if sheet.is_file() else output / table['png'].iloc[0]}")
# --- end explain ---


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
