"""Prediction as one job: ``covidscreen predict`` end to end, and the engine every interface opens.

:func:`open_predictor` is the one place that turns a run folder and the user's choices into a ready
:class:`~covidscreen.inference.predictor.Predictor`: which backend (``torch``, ``onnx``, or ``auto``: ONNX Runtime when
the run records an ONNX export and onnxruntime is installed; an ensemble always runs in PyTorch), which device, which
operating point (refused early, listing the run's points), and which weights may be loaded (``--expect-sha256`` or a
manifest, :mod:`covidscreen.inference.trust`). ``predict``, ``serve`` (``serving/service.py``) and ``dicom-node``
(``dicomnet/scoring.py``) all call it, so the three take the same decisions for single runs, ensembles and CT runs.

:func:`predict_files_job` is ``covidscreen predict``: it checks the combination of options, joins ``torchrun``'s
ranks when there are several, and writes the rows either streamed into a CSV (resumable: the files already in it are
skipped), or as a whole table (JSON, the merged CSV of several ranks, or standard output).
:func:`predict_series_job` is ``covidscreen predict-series``: whole CT series scored with a CT run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..ct.score import predict_series as score_series
from ..ct.score import series_table
from ..errors import CovidscreenError, DataError
from ..inference.predictor import Predictor
from ..inference.run import Run, load_run
from ..inference.stream import predict_to_csv
from ..inference.trust import trusted_sha256
from ..ood import attach_ood
from ..runtime import atomic_write_csv, atomic_write_text, resolve_device
from ..training import distributed
from .sharded import predict_files_sharded

BACKENDS = ("auto", "torch", "onnx")
# extra columns for a finished table (``predict --strip``: security's STRIP screening), computed above this floor
Screen = Callable[[Predictor, pd.DataFrame], pd.DataFrame]


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401  (optional dependency: covidscreen[onnx])
    except ImportError:
        return False
    return True


def choose_backend(run: Run, backend: str = "auto") -> str:
    """``torch`` or ``onnx`` for ``run``: ``auto`` picks ONNX Runtime when the run has an export it can load.

    Raises:
        DataError: an unknown backend name.
    """
    if backend not in BACKENDS:
        raise DataError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    exported = run.kind != "ensemble" and run.onnx is not None and (run.path / run.onnx.serving_file).is_file()
    return "onnx" if exported and _has_onnxruntime() else "torch"


def open_predictor(run_dir: str | Path | Run, backend: str = "torch", device: str = "auto",
                   operating_point: str = "default", mixed_precision: bool = False, expect_sha256: str | None = None,
                   manifest: str | Path | None = None, ood_policy: str = "flag") -> Predictor:
    """The run ready to predict, as the user asked (see the module docstring); the run folder is read once. Every
    result carries the run's out-of-distribution score and flag (``ood_policy``: :func:`~covidscreen.ood.attach_ood`;
    a run without an OOD model gets a warning naming ``covidscreen ood fit``).

    Raises:
        CheckpointError: not a run, weights that fail their checks or are not the trusted ones, no ONNX export.
        DataError: an unknown backend or operating point.
    """
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir)
    chosen = choose_backend(run, backend)
    predictor = Predictor(run, device=device, operating_point=operating_point, backend=chosen,
                          mixed_precision=mixed_precision, expected_sha256=trusted_sha256(run.path, expect_sha256,
                                                                                          manifest))
    attach_ood(predictor, ood_policy)
    return predictor


@dataclass
class PredictOutcome:
    """What ``predict_files_job`` did. ``table``: the rows when they were not streamed (None on ranks other than
    0); ``streamed``: the counts of a streamed CSV."""

    table: pd.DataFrame | None = None
    output: Path | None = None
    written: int = 0
    unreadable: int = 0
    skipped: int = 0
    streamed: bool = False

    def summary(self) -> str | None:
        """The line to print when the rows went to a file (None: they go to standard output, or not rank 0)."""
        if self.streamed:
            return (f"{self.written} file(s) scored, {self.unreadable} unreadable, {self.skipped} already in "
                    f"{self.output}")
        if self.table is None or self.output is None:
            return None
        return f"{len(self.table)} file(s), {int((self.table['error'] != '').sum())} unreadable: {self.output}"

    def text(self) -> str:
        """What ``covidscreen predict`` prints: the summary line when the rows went to a file, else the table as CSV
        (rank 0 without ``--output``), else nothing (the other ranks of torchrun)."""
        if self.summary() is not None:
            return f"{self.summary()}\n"
        return self.table.to_csv(index=False) if self.table is not None else ""


def predict_files_job(run_dir: str | Path, inputs: list[str], output: Path | None = None, resume: bool = False,
                      batch_size: int = 32, operating_point: str = "default", backend: str = "torch",
                      device: str = "auto", mixed_precision: bool = False, expect_sha256: str | None = None,
                      manifest: str | Path | None = None, screen: Screen | None = None,
                      ood_policy: str = "flag") -> PredictOutcome:
    """``covidscreen predict``: score ``inputs`` (files or folders) with a run, into ``output`` or a table.

    Args:
        output: ``.csv`` (rows appended as they come; with ``resume`` the files already in it are skipped) or
            ``.json``; None: the table is returned for the caller to print.
        screen: adds columns to the finished table (``--strip``); it needs the whole table in one process.
        ood_policy: ``flag`` (a file unlike the training images is still predicted, ``in_distribution`` false) or
            ``abstain`` (its prediction is ``abstain``, without probabilities).

    Raises:
        CovidscreenError: an output name or a combination of options that cannot work (the message says which).
    """
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise CovidscreenError(f"--output {output}: use a .csv or .json file name")
    if resume and (output is None or output.suffix.lower() != ".csv"):
        raise CovidscreenError("--resume needs a CSV --output to resume into")
    world = distributed.start()  # under torchrun each rank predicts its share of the files; rank 0 writes them all
    try:
        if world.distributed and resume:
            raise CovidscreenError("--resume streams into one CSV from one process; run it without torchrun")
        if world.distributed and backend != "onnx":
            device = str(world.local_device(resolve_device(device)))
        predictor = open_predictor(run_dir, backend, device, operating_point, mixed_precision, expect_sha256,
                                   manifest, ood_policy)
        if screen is not None and (world.distributed or resume):
            raise CovidscreenError("--strip screens the whole table in one process; run it without torchrun and "
                                   "--resume")
        if screen is None and not world.distributed and output is not None and output.suffix.lower() == ".csv":
            done = predict_to_csv(predictor, inputs, output, resume=resume, batch_size=batch_size)
            return PredictOutcome(output=output, written=done.written, unreadable=done.unreadable,
                                  skipped=done.skipped, streamed=True)
        if screen is not None:
            table = screen(predictor, predictor.predict_files(inputs, batch_size=batch_size))
        else:
            table = predict_files_sharded(predictor, inputs, world, batch_size=batch_size)
    finally:
        distributed.stop(world)
    if table is not None and output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        if output.suffix.lower() == ".csv":  # the merged result of the ranks of torchrun, or a screened table
            atomic_write_csv(output, table)
        else:
            atomic_write_text(output, table.to_json(orient="records", indent=2))
    return PredictOutcome(table=table, output=output)


def predict_series_job(run_dir: str | Path, series: list[str], output: Path | None = None,
                       window: tuple[float, float] | None = None, device: str = "auto") -> str:
    """``covidscreen predict-series``: score CT series with a CT run (the run's Predictor, :mod:`covidscreen.ct.score`)
    and write ``output``: ``.json`` (everything) or ``.csv`` (one row per series). Returns what to print: the JSON
    when there is no ``output``, else a one-line summary.

    Raises:
        CovidscreenError: an output name other than .csv or .json.
    """
    if output is not None and output.suffix.lower() not in (".csv", ".json"):
        raise CovidscreenError(f"--output {output}: use a .csv or .json file name")
    results = score_series(run_dir, series, window, device=device)
    if output is None:
        return json.dumps(results, indent=2)
    table = series_table(results)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".json":
        atomic_write_text(output, json.dumps(results, indent=2))
    else:
        atomic_write_csv(output, table)
    return f"{len(results)} series, {int((table['error'] != '').sum())} refused: {output}"
