"""Backdoor scans of a run folder: of inputs (STRIP), of the model (reversed triggers), of a training set (spectral
signatures and activation clustering). Each scan's verdict is recorded in the run's ``security_scan.json``, which
``covidscreen verify`` shows. :func:`scan_job` is ``covidscreen scan``: it chooses the scan from the options given.

All three use the run exactly as prediction does (:class:`~covidscreen.inference.predictor.Predictor`: its
checkpoint, preprocessing and resolution). Clean reference data for STRIP and the model scan is the run's own
validation split (``split.csv``), which a defender holds and an attacker who poisoned the training set did not choose.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.cache import default_cache_dir
from ..data.preprocess import load_preprocessed
from ..data.table import load_table
from ..errors import CheckpointError, ConfigError, DataError, ImageDecodeError
from ..inference.predictor import Predictor, expand_inputs
from ..inference.run import load_run
from ..runtime import atomic_write_csv, atomic_write_text, read_optional_json
from .cleanse import ModelScanResult, judge, reverse_all_pairs
from .integrity import SCAN_FILE, sha256_of
from .mmbd import MIN_REFERENCES, MMBDVerdict, judge_mmbd, max_margins
from .patches import PatchVerdict, default_patch_side, judge_patches, scan_targets
from .spectral import activation_clusters, penultimate_features, spectral_flags, spectral_scores, spectre_scores
from .strip import StripDetector
from .transplant import transplant_flags, transplant_scores

STRIP_FILE = "strip_calibration.npz"


def record_scan(run_dir: str | Path, kind: str, record: dict[str, Any]) -> None:
    """Add (or replace) one scan's record in ``security_scan.json``."""
    path = Path(run_dir) / SCAN_FILE
    scans = json.loads(path.read_text()) if path.is_file() else {}
    scans[kind] = {"date": datetime.now().isoformat(timespec="seconds"), **record}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(scans, indent=2, default=float))
    tmp.replace(path)


def readable_images(predictor: Predictor, paths: list[str]) -> tuple[list[np.ndarray], list[int]]:
    """The files preprocessed as the predictor does, and the positions in ``paths`` of those that could be read
    (unreadable files are left out: a scan works on what it can read)."""
    images, kept = [], []
    for i, path in enumerate(paths):
        try:
            images.append(load_preprocessed(path, predictor.size, predictor.preprocess, predictor.segmenter))
        except ImageDecodeError:
            continue
        kept.append(i)
    return images, kept


def split_images(run_dir: str | Path, predictor: Predictor, split: str, limit: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images of one split of the run (preprocessed as the predictor does), their class indices and paths."""
    table_path = Path(run_dir) / "split.csv"
    if not table_path.is_file():
        raise DataError(f"{run_dir} has no split.csv: the scan needs the run's validation images as clean references")
    table = pd.read_csv(table_path, keep_default_na=False)
    rows = table[table["split"] == split]
    if limit is not None and len(rows) > limit:
        rows = rows.sample(n=limit, random_state=seed)
    images, kept = readable_images(predictor, rows["path"].tolist())
    labels = [predictor.classes.index(lab) if lab in predictor.classes else -1 for lab in rows["label"].iloc[kept]]
    paths = rows["path"].iloc[kept].tolist()
    if len(images) < 4:
        raise DataError(f"{run_dir}: only {len(images)} readable {split} image(s) found from split.csv; the scan needs "
                        "the run's data folder where it was trained")
    return np.stack(images), np.array(labels), paths


def strip_detector(run_dir: str | Path, predictor: Predictor, frr: float = 0.01, n_perturb: int = 32,
                   mode: str = "add", seed: int = 0) -> StripDetector:
    """The run's STRIP detector, calibrated on its validation images (cached in ``strip_calibration.npz``)."""
    cache = Path(run_dir) / STRIP_FILE
    key = f"{n_perturb}:{mode}:{seed}"
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                pool, entropies = z["pool"], z["entropies"]
                threshold = float(np.quantile(entropies, frr, method="lower"))
                return StripDetector(predictor.predict_arrays, pool, threshold, frr, n_perturb, seed, mode)
    pool, _, _ = split_images(run_dir, predictor, "val", limit=200, seed=seed)
    det, entropies = StripDetector.calibrate(predictor.predict_arrays, pool, frr, n_perturb, seed, mode)
    try:
        np.savez(cache, pool=pool, entropies=entropies, key=np.array(key))
    except OSError:  # a read-only run folder (a deployed model): calibrate again next time
        pass
    return det


def scan_inputs(run_dir: str | Path, inputs: list[str | Path], frr: float = 0.01, n_perturb: int = 32,
                mode: str = "add", predictor: Predictor | None = None, record: bool = True) -> pd.DataFrame:
    """STRIP on files: one row per file with ``strip_entropy`` and ``strip_flag`` (True: likely carries a trigger)."""
    predictor = predictor or Predictor(run_dir, device="cpu")
    det = strip_detector(run_dir, predictor, frr, n_perturb, mode)
    rows = []
    for f in expand_inputs(inputs):
        try:
            img = load_preprocessed(f, predictor.size, predictor.preprocess, predictor.segmenter)
        except ImageDecodeError as exc:
            rows.append({"path": str(f), "strip_entropy": np.nan, "strip_flag": None, "error": str(exc)})
            continue
        flag, h = det.flags(img[None])
        rows.append({"path": str(f), "strip_entropy": float(h[0]), "strip_flag": bool(flag[0]), "error": ""})
    out = pd.DataFrame(rows, columns=["path", "strip_entropy", "strip_flag", "error"])
    if record:
        n_flag = int(out["strip_flag"].fillna(False).astype(bool).sum())
        record_scan(run_dir, "inputs", {"method": "STRIP", "frr": frr, "threshold": det.threshold, "mode": mode,
                                        "n_perturb": n_perturb, "files": len(out), "flagged": n_flag,
                                        "verdict": "triggers suspected" if n_flag else "no input flagged",
                                        "summary": f"{n_flag} of {len(out)} inputs flagged at {frr:.0%} FRR"})
    return out


def scan_cache_dir() -> Path:
    """Where model-scan results are kept between scans: ``security/`` in covidscreen's cache folder
    (``$COVIDSCREEN_CACHE``, else ``~/.cache/covidscreen``)."""
    return default_cache_dir() / "security"


def weights_digest(run_dir: str | Path) -> str:
    """The sha256 of the run's weights file as it is on disk now (the key of the scan cache: a model whose weights
    change is a new model; the run's sidecar is not trusted for this)."""
    run = load_run(run_dir)
    if run.kind == "ensemble":
        raise DataError(f"{run_dir} is an ensemble: scan each member run on its own")
    weights = run.path / str(run.weights_file or "")
    if not run.weights_file or not weights.is_file():
        named = run.weights_file or "none is named in the run's record"
        raise DataError(f"{run_dir} has no weights file ({named}); the scan needs a trained run folder")
    return sha256_of(weights)


def cached_result(run_dir: str | Path, key: str, compute: Any) -> tuple[Any, bool]:
    """``compute()`` for this run's weights and ``key``, or its earlier result (a scan's statistic depends only on
    the weights, the run's validation images and the key's settings); returns ``(result, was_cached)``.

    The cache lives outside the run folder (:func:`scan_cache_dir`), so a read-only, deployed reference model is
    scanned once, and it is keyed by the weights' sha256 read from disk, so a changed model is never served a stale
    result."""
    path = scan_cache_dir() / f"{weights_digest(run_dir)}.json"
    cached = read_optional_json(path) if path.is_file() else {}
    cached = cached if isinstance(cached, dict) else {}
    if key in cached:
        return cached[key], True
    value = compute()
    cached = read_optional_json(path) if path.is_file() else {}  # another scan may have added keys meanwhile
    cached = cached if isinstance(cached, dict) else {}
    cached[key] = value
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(cached, indent=1, default=float))
    except OSError:  # no writable cache: compute again next time
        pass
    return value, False


def model_mask_sizes(run_dir: str | Path, n_per_class: int = 24, steps: int = 150, seed: int = 0,
                     predictor: Predictor | None = None, progress: bool = False) -> dict[str, float]:
    """Reversed-trigger mask size of every (source -> target) pair, from the run's validation images (cached by the
    weights' sha256, :func:`cached_result`)."""
    def compute() -> dict[str, float]:
        pred = predictor or Predictor(run_dir, device="cpu")
        images, labels, _ = split_images(run_dir, pred, "val", seed=seed)
        triggers = reverse_all_pairs(pred.model, images, labels, n_per_class=n_per_class, steps=steps, seed=seed,
                                     desc=f"{Path(run_dir).name}: reversed trigger" if progress else None,
                                     class_names=list(pred.classes))
        return {f"{pred.classes[t.source]}->{pred.classes[t.target]}": t.mask_l1 for t in triggers}

    return cached_result(run_dir, f"cleanse:{n_per_class}:{steps}:{seed}", compute)[0]


PATCH_STEPS = 12  # the model scan's patch search: Adam steps per position (every position, every step: patches.py)
PATCH_IMAGES = 96  # ... and the held-out images of the other classes its success is measured on (at most)


def patch_cache_key(side: int, steps: int = PATCH_STEPS, seed: int = 0, n_test: int = PATCH_IMAGES) -> str:
    """The cache key of a patch search's result: the search (full, not successive halving, since issue 26) and
    every setting that changes it, so a result computed otherwise is never served."""
    return f"patches-full:{side}:{steps}:{seed}:{n_test}"


def model_patch_results(run_dir: str | Path, side: int | None = None, steps: int = PATCH_STEPS, seed: int = 0,
                        predictor: Predictor | None = None, progress: bool = False,
                        n_test: int = PATCH_IMAGES) -> dict[str, Any]:
    """The best patch towards every class (``patches.py``), from the run's validation images: ``{"success": {class:
    share of held-out images sent to it}, "position": {class: [row, column]}, "side": side}`` (cached by the weights'
    sha256, :func:`cached_result`: a cached result does not even load the model).

    ``side``: patch side in model pixels; default 5% of the input side (3 px at 64 px, 11 px at 224 px).
    ``n_test``: held-out validation images of the other classes each target's success is measured on (at most)."""
    size = predictor.size if predictor is not None else load_run(run_dir).image_size
    side = side or default_patch_side(size)

    def compute() -> dict[str, Any]:
        pred = predictor or Predictor(run_dir, device="cpu")
        images, labels, _ = split_images(run_dir, pred, "val", seed=seed)
        results = scan_targets(pred.model, images, labels, side=side, steps=steps, seed=seed, n_test=n_test,
                               desc=f"{Path(run_dir).name}: patch search" if progress else None,
                               class_names=list(pred.classes))
        return {"success": {pred.classes[r.target]: r.success for r in results},
                "position": {pred.classes[r.target]: list(r.position) for r in results}, "side": side}

    return cached_result(run_dir, patch_cache_key(side, steps, seed, n_test), compute)[0]


def model_patch_success(run_dir: str | Path, side: int | None = None, steps: int = PATCH_STEPS, seed: int = 0,
                        predictor: Predictor | None = None, progress: bool = False,
                        n_test: int = PATCH_IMAGES) -> dict[str, float]:
    """Best patch success towards every class (:func:`model_patch_results`' ``success``)."""
    return model_patch_results(run_dir, side, steps, seed, predictor, progress, n_test)["success"]


def model_max_margins(run_dir: str | Path, steps: int = 300, starts: int = 8, seed: int = 0,
                      progress: bool = False) -> dict[str, float]:
    """MM-BD's largest logit margin per class (``mmbd.py``; needs no data), cached by the weights' sha256."""
    def compute() -> dict[str, float]:
        pred = Predictor(run_dir, device="cpu")
        margins = max_margins(pred.model, (pred.size, pred.size), len(pred.classes), starts=starts, steps=steps,
                              seed=seed, desc=f"{Path(run_dir).name}: MM-BD" if progress else None)
        return dict(zip(pred.classes, (float(m) for m in margins), strict=True))

    return cached_result(run_dir, f"mmbd:{steps}:{starts}:{seed}", compute)[0]


_BUDGET_OPTIONS = {"steps": ("--steps", 1), "images": ("--images", 2), "mmbd_steps": ("--mmbd-steps", 1)}


@dataclass(frozen=True)
class ScanBudget:
    """How long the model scan optimises (``covidscreen scan --steps/--images/--mmbd-steps``, as ``security
    detectors``). The defaults are those of the verdicts in docs/security.md; a smaller budget is cheaper and weaker
    (a search stopped early may miss a trigger the default finds). The budget is recorded with the verdict, and
    each setting is part of its scan's cache key (:func:`model_mask_sizes`, :func:`model_max_margins`), so a result
    computed at one budget is never served to a scan at another."""

    steps: int = 150  # reversed triggers: optimisation steps per class pair
    images: int = 24  # reversed triggers: validation images per class
    mmbd_steps: int = 300  # MM-BD: gradient steps of the margin search

    def validate(self) -> ScanBudget:
        """Raises ConfigError naming the option of a value below its least (``--images``: 2, the others 1)."""
        for name, (option, least) in _BUDGET_OPTIONS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{option} {value!r} is invalid: expected a whole number >= {least}")
        return self

    def as_dict(self) -> dict[str, int]:
        """The budget as recorded in ``security_scan.json`` (with the patch search's fixed steps)."""
        return {"steps": self.steps, "images": self.images, "mmbd_steps": self.mmbd_steps,
                "patch_steps": PATCH_STEPS, "patch_images": PATCH_IMAGES}

    def describe(self) -> str:
        return (f"reversed triggers {self.steps} steps on {self.images} images per class, MM-BD {self.mmbd_steps} "
                f"steps, patch search {PATCH_STEPS} steps at every position, measured on {PATCH_IMAGES} images")


@dataclass
class ModelScan:
    """The model-level scans: reversed free-form triggers, the patch search and MM-BD (judged with at least 5
    references); flagged when any flags. ``budget``: how long they optimised."""

    reversed: ModelScanResult
    patches: PatchVerdict
    mmbd: MMBDVerdict | None = None
    budget: ScanBudget = field(default_factory=ScanBudget)

    @property
    def flagged(self) -> bool:
        return self.reversed.flagged or self.patches.flagged or bool(self.mmbd and self.mmbd.flagged)

    def evidence(self) -> str:
        r, p = self.reversed, self.patches
        return (f"a patch sends {p.success:.0%} of other classes' images to {p.target!r} (clean "
                f"references at most {p.reference_max:.0%}; flagged from {p.min_success:.0%} and +{p.margin:.0%}); "
                f"smallest reversed trigger {r.sizes[r.pair]:.1f} px ({r.pair}), {r.min_ratio:.2f} x the clean "
                f"references' (flagged below {r.threshold:.2f}); " + self._mmbd_evidence())

    def _mmbd_evidence(self) -> str:
        m = self.mmbd
        if m is None:
            return "MM-BD not run"
        if m.p_value is None:
            return (f"MM-BD largest margin {m.statistic:.1f} ({m.target!r}), not judged: it needs at least "
                    f"{MIN_REFERENCES} clean references")
        return (f"MM-BD largest margin {m.statistic:.1f} ({m.target!r}) against the references' "
                f"{min(m.references):.1f}-{max(m.references):.1f}, p = {m.p_value:.3f} (flagged below {m.alpha})")

    def summary(self) -> str:
        """The verdict and its evidence; a budget other than the default is named (its verdict is weaker)."""
        budget = ("" if self.budget == ScanBudget() else
                  f" (budget: {self.budget.describe()}; the default: {ScanBudget().describe()})")
        return (f"model scan: {'BACKDOOR SUSPECTED' if self.flagged else 'no backdoor found'}: {self.evidence()}"
                f"{budget}")

    def advice(self, run_dir: str | Path) -> str:
        """The verdict in plain words and what to do next."""
        if self.flagged:
            return (f"Verdict: this model probably carries a backdoor (a hidden trigger that changes its answer). Do "
                    f"not use it on patients. Next: remove the backdoor with a small clean data set you trust "
                    f"('covidscreen sanitize {run_dir} --data CLEAN_DIR --output NEW_RUN_DIR') and scan the new run "
                    f"again, or do not use this model and get one from a source you trust. 'serve' and 'dicom-node' "
                    f"now refuse to start with it unless given {OVERRIDE_FLAG}.")
        return ("Verdict: no sign of a backdoor. These scans find patch triggers of a few pixels (BadNets-like); "
                "they are evidence, not proof, that the model is clean. Next: use the model as usual; pin its "
                "weights' sha256 ('covidscreen verify', --expect-sha256) so that what you scanned is what you run.")


def scan_model(run_dir: str | Path, references: list[str | Path], budget: ScanBudget | None = None,
               seed: int = 0, record: bool = True, progress: bool = False, log: Any = None,
               patch_side: int | None = None) -> ModelScan:
    """Reverse-engineer triggers and search patches of the run and of clean reference runs; judge against them.

    ``budget``: how long each search optimises (default :class:`ScanBudget`'s), for the model and its references
    alike, recorded with the verdict. ``patch_side``: side of the searched patches in model pixels, for the model
    and its references alike (default 5% of the input side, :func:`~covidscreen.security.patches.default_patch_side`).

    Each model's results are cached by its weights' sha256 (:func:`cached_result`), so the references are scanned
    once, whatever model they are later compared with. ``progress``: a bar (with ETA) per model and class; ``log``:
    a callable told when each model starts and ends (None: silent)."""
    if len(references) < 2:
        raise DataError("the model scan needs at least 2 reference runs trained clean on the same data (--reference "
                        "RUN --reference RUN): its threshold is calibrated on them")
    budget = (budget or ScanBudget()).validate()
    say = log or (lambda _msg: None)
    models = [Path(run_dir), *(Path(r) for r in references)]
    sizes, patches, margins = [], [], []
    for i, model in enumerate(models):
        what = "model" if i == 0 else "reference"
        t0 = time.perf_counter()
        say(f"[scan {i + 1}/{len(models)}] {what} {model}")
        sizes.append(model_mask_sizes(model, budget.images, budget.steps, seed, progress=progress))
        patches.append(model_patch_success(model, side=patch_side, steps=PATCH_STEPS, seed=seed, progress=progress))
        margins.append(model_max_margins(model, steps=budget.mmbd_steps, seed=seed, progress=progress))
        say(f"[scan {i + 1}/{len(models)}] {model.name} done in {time.perf_counter() - t0:.0f} s")
    result = ModelScan(judge(sizes[0], sizes[1:]), judge_patches(patches[0], patches[1:]),
                       judge_mmbd(margins[0], margins[1:]), budget)
    if record:
        record_scan(run_dir, "model", {
            "method": "reversed triggers per class pair, patch search and MM-BD, vs clean references",
            **result.reversed.as_dict(), **result.patches.as_dict(), **result.mmbd.as_dict(),
            "patch_side": patch_side or default_patch_side(load_run(run_dir).image_size),
            "budget": budget.as_dict(),
            "flagged": result.flagged,
            "references": [str(Path(r).resolve()) for r in references],
            "weights_sha256": weights_digest(run_dir),
            "verdict": "BACKDOOR SUSPECTED" if result.flagged else "no backdoor found",
            "summary": result.summary(), "advice": result.advice(run_dir)})
    return result


OVERRIDE_FLAG = "--allow-flagged-model"


def refuse_flagged_model(run_dir: str | Path, allow: bool = False) -> str | None:
    """Refuse a model whose last model scan flagged it (``serve`` and ``dicom-node`` call this at start-up).

    The scan counts when it was made on the weights the folder holds now (its recorded sha256); an ensemble is
    refused when any member is. Returns a warning to log when ``allow`` overrides a flag, else None.

    Raises:
        CheckpointError: the last scan flagged the model and ``allow`` is off (the message names the override).
    """
    run = load_run(run_dir)
    folders = [run.path, *run.members] if run.kind == "ensemble" else [run.path]
    for folder in folders:
        scans = read_optional_json(folder / SCAN_FILE)
        record = scans.get("model") if isinstance(scans, dict) else None
        if not isinstance(record, dict) or not record.get("flagged"):
            continue
        scanned = record.get("weights_sha256")
        if scanned is not None:
            try:
                if weights_digest(folder) != scanned:
                    continue  # the weights changed since that scan: it says nothing about these
            except DataError:
                pass
        message = (f"{folder}: its last backdoor scan ({record.get('date', 'undated')}) flagged it: "
                   f"{record.get('summary', 'backdoor suspected')}")
        if allow:
            return f"{message}; started anyway because {OVERRIDE_FLAG} was given"
        raise CheckpointError(f"{message}. Refused: sanitize it ('covidscreen sanitize {folder} --data CLEAN_DIR "
                              f"--output NEW_RUN_DIR') and scan again, or start anyway with {OVERRIDE_FLAG}")
    return None


def scan_data(run_dir: str | Path, data_dir: str | Path, expected_fraction: float = 0.1, seed: int = 0,
              train_only: bool = True, record: bool = True, patch_side: int | None = None,
              progress: bool = False) -> pd.DataFrame:
    """Rank a training set's images by how likely they are poisoned.

    Returns one row per image: path, label, spectral_score, spectral_flag (the ``1.5 * expected_fraction`` highest
    of its label), spectre_score and spectre_flag (the same rule), cluster_flag (activation clustering),
    transplant_score and transplant_flag (``transplant.py``: the image's pixels at each class's best patch position
    pasted on clean validation images of the other classes, the share sent to that class relative to that patch's
    success; runs the model scan's patch search, cached, when it has not run), sorted most suspicious first
    (transplant flag and score, then spectral score).

    Raises:
        DataError: an ensemble (its members are scanned one by one), a training set with too few readable images.
    """
    run = load_run(run_dir)
    if run.kind == "ensemble":
        raise DataError(f"{run_dir} is an ensemble: scan the training set with each member run on its own "
                        "('covidscreen scan MEMBER_RUN --data DIR')")
    predictor = Predictor(run, device="cpu")
    table = load_table(data_dir)
    split_file = Path(run_dir) / "split.csv"
    if train_only and split_file.is_file():
        trained = set(pd.read_csv(split_file, keep_default_na=False).query("split == 'train'")["path"])
        subset = table[table["path"].isin(trained)]
        table = subset if len(subset) else table
    images, kept = readable_images(predictor, table["path"].tolist())
    paths, labels = table["path"].iloc[kept].tolist(), table["label"].iloc[kept].tolist()
    if len(images) < 10:
        raise DataError(f"{data_dir}: only {len(images)} readable image(s); the training-set scan needs its images")
    stacked = np.stack(images)
    head = predictor.model.backbone.get_submodule(predictor.model.spec.head)
    feats = penultimate_features(predictor.model, head, stacked, device=predictor.device)
    labels_arr = np.array(labels)
    scores = spectral_scores(feats, labels_arr)
    spectre = spectre_scores(feats, labels_arr, trim=min(0.5, 1.5 * expected_fraction))
    transplant, patches = transplant_scan(run_dir, predictor, stacked, patch_side, seed, progress)
    out = pd.DataFrame({"path": paths, "label": labels, "spectral_score": scores,
                        "spectral_flag": spectral_flags(scores, labels_arr, expected_fraction),
                        "spectre_score": spectre,
                        "spectre_flag": spectral_flags(spectre, labels_arr, expected_fraction),
                        "cluster_flag": activation_clusters(feats, labels_arr, seed=seed),
                        "transplant_score": transplant[1], "transplant_flag": transplant[0]})
    out = out.sort_values(["transplant_flag", "transplant_score", "spectral_score"], ascending=False,
                          kind="stable").reset_index(drop=True)
    if record:
        record_scan(run_dir, "data", {
            "method": "spectral signatures, SPECTRE, activation clustering and trigger transplant",
            "data_dir": str(Path(data_dir).resolve()),
            "images": len(out), "expected_fraction": expected_fraction,
            "spectral_flagged": int(out["spectral_flag"].sum()), "cluster_flagged": int(out["cluster_flag"].sum()),
            "spectre_flagged": int(out["spectre_flag"].sum()),
            "transplant_flagged": int(out["transplant_flag"].sum()),
            "patch_success": patches["success"], "patch_position": patches["position"], "patch_side": patches["side"],
            "most_suspicious": out["path"].head(10).tolist(),
            "verdict": "review the flagged images",
            "summary": data_summary(out)})
    return out


TRANSPLANT_HOSTS = 32  # clean validation images each region is pasted on, per class
TRANSPLANT_PAD = 1  # the pasted region: the best patch widened by this many patch sides on every side


def transplant_scan(run_dir: str | Path, predictor: Predictor, images: np.ndarray, patch_side: int | None = None,
                    seed: int = 0, progress: bool = False) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, Any]]:
    """The transplant test of ``images`` at each class's best patch (:func:`model_patch_results`): the flags and
    relative scores of :func:`~covidscreen.security.transplant.transplant_flags`, and the patches used. The hosts
    are up to :data:`TRANSPLANT_HOSTS` validation images of the run outside the class (seeded)."""
    patches = model_patch_results(run_dir, side=patch_side, seed=seed, predictor=predictor, progress=progress)
    val, val_labels, _ = split_images(run_dir, predictor, "val", seed=seed)
    scores = {}
    for cls, position in patches["position"].items():
        t = predictor.classes.index(cls)
        others = np.flatnonzero((val_labels != t) & (val_labels >= 0))
        hosts = np.random.default_rng(seed).permutation(others)[:TRANSPLANT_HOSTS]
        if len(hosts) == 0:
            continue
        scores[cls] = transplant_scores(predictor.model, images, val[hosts], position, patches["side"], target=t,
                                        pad=TRANSPLANT_PAD * patches["side"],
                                        desc=f"transplant -> {cls}" if progress else None)
    if not scores:
        return (np.zeros(len(images), dtype=bool), np.zeros(len(images))), patches
    return transplant_flags(scores, patches["success"]), patches


def data_summary(table: pd.DataFrame) -> str:
    """One line per detector of the training-set scan: how many of the images it flagged."""
    n = len(table)
    return (f"{int(table['transplant_flag'].sum())} of {n} flagged by the trigger transplant, "
            f"{int(table['spectral_flag'].sum())} by spectral signatures, {int(table['spectre_flag'].sum())} by "
            f"SPECTRE, {int(table['cluster_flag'].sum())} by activation clustering")


def predict_screened(predictor: Predictor, run_dir: str | Path, inputs: list[str | Path], strip: bool = False,
                     frr: float = 0.01, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """``predictor.predict_files``, plus ``strip_entropy`` and ``strip_flag`` columns when ``strip`` is on.

    Off, this is exactly the normal prediction (no extra work); on, each readable file is screened after the batch
    is predicted (STRIP runs ``n_perturb`` forward passes per image, so it is the dominant cost then).
    """
    preds = predictor.predict_files(inputs, batch_size=batch_size, progress=progress)
    return strip_screen(predictor, preds, frr=frr) if strip else preds


def strip_screen(predictor: Predictor, preds: pd.DataFrame, frr: float = 0.01) -> pd.DataFrame:
    """``preds`` (one row per file, as :meth:`Predictor.predict_files` gives) plus ``strip_entropy`` and
    ``strip_flag`` of each readable file (``covidscreen predict --strip``)."""
    screened = scan_inputs(predictor.run.path, preds["path"].tolist(), frr=frr, predictor=predictor, record=False)
    return preds.merge(screened[["path", "strip_entropy", "strip_flag"]], on="path", how="left")


@dataclass(frozen=True)
class ScanOutcome:
    """What ``covidscreen scan`` did: which scan (``strip``, ``data`` or ``model``), its summary (with the model
    scan's advice), and the per-file table of the STRIP and training-set scans (None for the model scan)."""

    kind: str
    summary: str
    table: pd.DataFrame | None = None
    output: Path | None = None  # where the table was written

    def text(self) -> str:
        """What the command prints: the STRIP table as CSV when it was not written to a file, then the summary."""
        shown = self.table.to_csv(index=False) if self.kind == "strip" and self.output is None else ""
        return shown + self.summary


def _refuse_options(named: list[str], scan: str) -> None:
    if named:
        one = len(named) == 1
        raise ConfigError(f"{' and '.join(named)} set{'s' if one else ''} the model scan (--reference); "
                          f"{'it does' if one else 'they do'} not apply to {scan}")


def scan_job(run_dir: str | Path, inputs: list[str] | None = None, data: str | Path | None = None,
             references: list[str | Path] | None = None, frr: float = 0.01, expected_fraction: float = 0.1,
             output: Path | None = None, log: Any = None, patch_side: int | None = None, steps: int | None = None,
             images: int | None = None, mmbd_steps: int | None = None) -> ScanOutcome:
    """``covidscreen scan``: STRIP on ``inputs`` when given, else the training-set scan of ``data`` when given, else
    the model scan against ``references`` (``log``: told when each model starts and ends; ``patch_side``: its
    patch search's side in model pixels; ``steps``, ``images``, ``mmbd_steps``: its :class:`ScanBudget`, the
    default's where None). The per-file table of the first two goes to ``output`` (CSV) when given; every scan
    records its verdict in the run.

    Raises:
        DataError: the model scan with fewer than 2 references, a training set with too few readable images.
        ConfigError: ``patch_side`` below 1 pixel or larger than the model's input; a budget value below its least
            (:meth:`ScanBudget.validate`); a budget value given to STRIP or the training-set scan, ``patch_side`` to
            STRIP (the training-set scan's trigger transplant runs the patch search, so it takes the side).
    """
    given = {"--patch-side": patch_side, "--steps": steps, "--images": images, "--mmbd-steps": mmbd_steps}
    named = [option for option, value in given.items() if value is not None]
    if inputs:
        _refuse_options(named, "STRIP (--inputs)")
    elif data is not None:  # the training-set scan runs the patch search (its side applies), not the others
        _refuse_options([option for option in named if option != "--patch-side"], "the training-set scan (--data)")
    budget = ScanBudget(**{k: v for k, v in (("steps", steps), ("images", images), ("mmbd_steps", mmbd_steps))
                           if v is not None}).validate()
    if patch_side is not None:
        size = load_run(run_dir).image_size
        if not 1 <= patch_side <= size:
            raise ConfigError(f"--patch-side {patch_side} is invalid: expected 1 to the model's input side ({size} "
                              "px)")
    if inputs:
        table = scan_inputs(run_dir, list(inputs), frr=frr)
        flagged = int(table["strip_flag"].fillna(False).astype(bool).sum())
        kind, summary = "strip", (f"STRIP: {flagged} of {len(table)} input(s) flagged as carrying a trigger (at "
                                  f"{frr:.1%} FRR)")
    elif data is not None:
        table = scan_data(run_dir, data, expected_fraction=expected_fraction, patch_side=patch_side, progress=True)
        kind, summary = "data", (f"training-set scan: {data_summary(table)}; most likely poisoned first:\n"
                                 + "\n".join(table["path"].head(10)))
    else:
        result = scan_model(run_dir, list(references or []), budget, progress=True, log=log, patch_side=patch_side)
        return ScanOutcome("model", f"{result.summary()}\n{result.advice(run_dir)}")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(output, table)
    return ScanOutcome(kind, summary, table, output)

