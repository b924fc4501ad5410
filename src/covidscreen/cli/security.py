"""``covidscreen verify``, ``scan`` and ``security backdoor``: provenance, backdoor screening, the demonstration."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError, CovidscreenError
from .recipes import parse_sets

app = typer.Typer()
security_app = typer.Typer(help="Security experiments (the backdoor demonstration of docs/security.md).",
                           no_args_is_help=True)


@app.command()
def verify(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    expect_sha256: Annotated[str | None, typer.Option("--expect-sha256", help="the weights' sha256 you trust")] = None,
    manifest: Annotated[Path | None, typer.Option("--manifest", help="YAML/JSON list of allowed models")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of text")] = False,
) -> None:
    """Provenance of a model (hashes, split fingerprint, code version, scans) and its integrity checks."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.integrity import verify_job

    outcome = verify_job(run_dir, expect_sha256, manifest, as_json)
    typer.echo(outcome.text)
    if outcome.failure is not None:
        raise CovidscreenError(outcome.failure)


@app.command()
def scan(
    run_dir: Annotated[Path, typer.Argument(help="run folder written by train")],
    inputs: Annotated[list[str] | None, typer.Option(
        "--inputs", help="STRIP: image files or folders to screen")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="training-set scan of this data folder")] = None,
    reference: Annotated[list[Path] | None, typer.Option(
        "--reference", help="model scan: a run trained clean on the same data (at least 2)")] = None,
    frr: Annotated[float, typer.Option("--frr", help="STRIP false-rejection rate on clean images")] = 0.01,
    expected_fraction: Annotated[float, typer.Option(
        "--expected-fraction", help="training-set scan: the poisoned share to expect (spectral signatures and "
        "SPECTRE flag 1.5x it per class)")] = 0.1,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the per-file table (.csv)")] = None,
    patch_side: Annotated[int | None, typer.Option(
        "--patch-side", help="model scan and training-set scan's trigger transplant: side of the searched patches "
        "in model pixels (default: 5% of the input side, 3 px at 64 px)")] = None,
    steps: Annotated[int | None, typer.Option(
        "--steps", help="model scan: optimisation steps per reversed trigger (default 150; fewer: cheaper and "
        "weaker, recorded with the verdict)")] = None,
    images: Annotated[int | None, typer.Option(
        "--images", help="model scan: validation images per class per reversed trigger (default 24, at least 2)")]
    = None,
    mmbd_steps: Annotated[int | None, typer.Option(
        "--mmbd-steps", help="model scan: MM-BD's gradient steps of the margin search (default 300)")] = None,
) -> None:
    """Backdoor screening: of inputs (--inputs, STRIP), of a training set (--data), else of the model (--reference)."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.scan import scan_job

    outcome = scan_job(run_dir, inputs, data, reference, frr=frr, expected_fraction=expected_fraction, output=output,
                       log=lambda msg: typer.echo(msg, err=True), patch_side=patch_side, steps=steps,
                       images=images, mmbd_steps=mmbd_steps)
    typer.echo(outcome.text())


@app.command()
def sanitize(
    run_dir: Annotated[Path, typer.Argument(help="run folder of the model to clean (e.g. a downloaded one)")],
    data: Annotated[Path, typer.Option("--data", help="clean images you trust, every class of the model (at most "
                                       "5% of its training set's size is used)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="new run folder for the sanitized model")],
    method: Annotated[str, typer.Option("--method", help="fine-pruning (Liu et al. 2018), nad (Li et al. 2021), "
                                        "i-bau (Zeng et al. 2022), anp (Wu and Wang 2021), unlearn (Neural Cleanse's "
                                        "unlearning of found patch triggers, Wang et al. 2019) or finetune")]
    = "fine-pruning",
    budget: Annotated[int | None, typer.Option("--budget", help="most clean images used (default: 5% of the "
                                               "training set)")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=1, help="fine-tuning epochs over the clean images "
                                               "(default 20; unlearn: per round, default 10)")] = None,
    rounds: Annotated[int | None, typer.Option("--rounds", help="unlearn: most rounds of patch search and "
                                               "fine-tuning (default 5)")] = None,
    patch_side: Annotated[int | None, typer.Option("--patch-side", help="unlearn: side of the searched "
                                                   "patches in model pixels (default: 5% of the input side)")]
    = None,
    seed: Annotated[int | None, typer.Option("--seed", help="seed of sampling, augmentation and batch order "
                                             "(default 0)")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE (the value read as YAML): any other "
                                                      "setting of the method, e.g. unlearn_freeze=0.75")] = None,
) -> None:
    """Remove a backdoor with a small clean data set, without knowing the trigger; writes a new run folder."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.sanitize import sanitize as run_sanitize
    from ..security.sanitize import sanitize_config

    given = {"unlearn_epochs" if method == "unlearn" else "epochs": epochs, "unlearn_rounds": rounds,
             "budget": budget, "unlearn_side": patch_side, "seed": seed}
    given = {k: v for k, v in given.items() if v is not None}
    sets = parse_sets(setting or [])
    if both := sorted(set(sets) & set(given)):
        raise ConfigError(f"--set {', '.join(both)}: already given by its own option (--epochs, --rounds, --budget, "
                          "--patch-side or --seed); give each setting once")
    cfg = sanitize_config(method, {**sets, **given})
    result = run_sanitize(run_dir, data, output, cfg, progress=True)
    typer.echo(result.summary())


@security_app.command("backdoor")
def backdoor(
    config: Annotated[Path, typer.Argument(help="experiment file, e.g. configs/security/backdoor_3class.yaml")],
    output: Annotated[Path, typer.Option("--output", "-o", help="folder for the runs and backdoor.json")],
) -> None:
    """Train clean, poisoned and fine-tuned models and measure clean metrics and attack success (resumable)."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.backdoor import BackdoorExperiment, run_experiment

    run_experiment(BackdoorExperiment.from_yaml(config), output)
    typer.echo(f"results: {output / 'backdoor.json'}")


@security_app.command("detectors")
def detectors(
    output: Annotated[Path, typer.Argument(help="folder of a finished 'covidscreen security backdoor' experiment")],
    frr: Annotated[float, typer.Option("--frr", help="STRIP's false-rejection rate on clean validation images")]
    = 0.01,
    steps: Annotated[int, typer.Option("--steps", min=1, help="optimisation steps per reversed trigger")] = 100,
    images: Annotated[int, typer.Option("--images", min=2, help="validation images per class per reversed "
                                        "trigger")] = 16,
    mmbd_steps: Annotated[int, typer.Option("--mmbd-steps", min=1, help="MM-BD: gradient steps of the margin "
                                            "search")] = 300,
) -> None:
    """Run STRIP, the model scan and the training-set scan on every model of the experiment, against the truth."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.backdoor import evaluate_detectors

    evaluate_detectors(output, frr=frr, nc_steps=steps, nc_images=images, mmbd_steps=mmbd_steps)
    typer.echo(f"results: {output / 'detectors.json'}")


@security_app.command("defences")
def defences(
    output: Annotated[Path, typer.Argument(help="folder of a finished 'covidscreen security backdoor' experiment")],
    method: Annotated[list[str] | None, typer.Option("--method", help="defence(s) to run (default: fine-pruning, "
                                                     "nad, i-bau; also anp, unlearn, finetune)")] = None,
    run: Annotated[list[str] | None, typer.Option("--run", help="only these models of the experiment")] = None,
    setting: Annotated[list[str] | None, typer.Option("--set", help="KEY=VALUE (the value read as YAML): a sanitize "
                                                      "setting other than its default, e.g. unlearn_random=0 (results "
                                                      "kept apart)")] = None,
) -> None:
    """Sanitize every model of the experiment with each defence (5% clean set) and measure ASR and clean figures."""
    # imported per command: `covidscreen --help` stays free of PyTorch (benchmarks/bench_cli_import.py)
    from ..security.backdoor import evaluate_defences
    from ..security.defence_report import REPORT_COLUMNS, report_rows

    found = evaluate_defences(output, methods=tuple(method or ("fine-pruning", "nad", "i-bau")), runs=run,
                              settings=parse_sets(setting or []))
    rows = report_rows(found)
    if rows:
        # rich is imported here with the rest: the table wraps to the terminal (200 columns into a file or pipe)
        from rich.console import Console
        from rich.table import Table

        table = Table(*REPORT_COLUMNS, title="sanitized models against the goal: attack success < 5%, AUC -0.01, "
                      "sensitivity and specificity -2 points at most (paired 95% intervals on the test images)")
        for row in rows:
            table.add_row(*row)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    typer.echo(f"results: {output / 'defences.json'}")
