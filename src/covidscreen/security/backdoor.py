"""The backdoor demonstration: clean and poisoned models trained by the normal trainer, compared.

For each attack of an experiment file (a poison fraction, a target class or none), a poisoned copy of the clean run's
training set is written (:mod:`covidscreen.security.poison`) and trained on with the same config and split. Each
model is then measured on the clean test split (AUC, sensitivity, specificity at its validation-chosen operating
point) and on the same test images with the trigger stamped (attack success rate). Finally chosen backdoored models
are fine-tuned on clean data (``init_from``: trunk kept, new head) to measure how much of the backdoor survives.

Attack success is counted honestly:

- targeted: share of triggered test images whose true class is *not* the target that are predicted as the target
  (Matsuo and Takemoto counted every test image, target class included, which inflates the rate); the same share
  without the trigger is reported next to it (the model's own error rate towards the target);
- non-targeted: share of triggered test images predicted as another class than their true one, over all test
  images and over those the model classifies correctly without the trigger.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import roc_auc_score, roc_curve

from ..config import TrainConfig, apply_overrides
from ..data.preprocess import load_preprocessed
from ..errors import ConfigError, DataError
from ..inference.predictor import Predictor
from ..inference.run import is_run_folder
from ..workflows.fit import fit
from .cleanse import judge, leave_one_out_ratios
from .defence_report import attack_figure, image_figures, judge_defence, paired_changes
from .mmbd import judge_mmbd
from .patches import judge_patches
from .poison import PoisonConfig, poison_split
from .scan import model_mask_sizes, model_max_margins, model_patch_success, scan_data, strip_detector
from .sensitivity import corner_ratios, input_sensitivity
from .spectral import precision_recall
from .trigger import Trigger


@dataclass
class Attack:
    name: str
    fraction: float
    target: str | None = None  # None: non-targeted
    poison_validation: bool = False  # the attacker's data also feeds the victim's validation split


@dataclass
class BackdoorExperiment:
    """An experiment file (YAML): the shared training config, the trigger, the attacks and the fine-tuning runs."""

    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides shared by every run
    trigger: dict[str, Any] = field(default_factory=dict)
    attacks: list[Attack] = field(default_factory=list)
    clean_seeds: list[int] = field(default_factory=lambda: [0])  # reference clean models (model-level scan)
    finetune: list[str] = field(default_factory=list)  # attacks whose model is fine-tuned on clean data
    finetune_train: dict[str, Any] = field(default_factory=dict)  # overrides of the fine-tuning runs

    @classmethod
    def from_yaml(cls, path: str | Path) -> BackdoorExperiment:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"experiment file {path} could not be read as YAML ({exc.__class__.__name__})") from None
        unknown = set(raw) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"experiment file {path}: unknown key(s) {', '.join(sorted(unknown))}")
        raw["attacks"] = [Attack(**a) for a in raw.get("attacks", [])]
        exp = cls(**raw)
        missing = set(exp.finetune) - {a.name for a in exp.attacks}
        if missing:
            raise ConfigError(f"experiment file {path}: finetune names unknown attack(s) {', '.join(sorted(missing))}")
        return exp

    def train_config(self, **overrides: Any) -> TrainConfig:
        return apply_overrides(TrainConfig(), {**self.train, **overrides})


def load_test_images(run_dir: str | Path, predictor: Predictor) -> tuple[np.ndarray, np.ndarray]:
    """The run's test images, preprocessed as the predictor sees them, and their class indices."""
    split = pd.read_csv(Path(run_dir) / "split.csv", keep_default_na=False)
    test = split[split["split"] == "test"]
    truth = test["label"]  # the task's true label (a binary run keeps the 3-class one in original_label)
    images = np.stack([load_preprocessed(p, predictor.size, predictor.preprocess, predictor.segmenter)
                       for p in test["path"]])
    return images, np.array([predictor.classes.index(c) for c in truth])


def attack_success(predictor: Predictor, images: np.ndarray, y: np.ndarray, trigger: Trigger,
                   target: str | None) -> dict[str, float]:
    """Attack success on ``images`` (uint8, model resolution) stamped with ``trigger``; see the module docstring."""
    classes = predictor.classes
    clean = np.array([classes.index(c) for c in predictor.decide(predictor.predict_arrays(images))])
    stamped = np.array([classes.index(c) for c in predictor.decide(predictor.predict_arrays(trigger.apply(images)))])
    if target is not None:
        t = classes.index(target)
        keep = y != t
        return {"n": int(keep.sum()), "attack_success_rate": float(np.mean(stamped[keep] == t)),
                "target_rate_without_trigger": float(np.mean(clean[keep] == t))}
    right = clean == y
    return {"n": int(len(y)), "attack_success_rate": float(np.mean(stamped != y)),
            "error_rate_without_trigger": float(np.mean(clean != y)),
            "n_correct_clean": int(right.sum()),
            "attack_success_rate_on_correct": float(np.mean(stamped[right] != y[right])) if right.any()
            else float("nan")}


def clean_metrics(run_dir: Path) -> dict[str, float]:
    m = json.loads((run_dir / "metrics.json").read_text())
    cvr = m.get("covid_vs_rest") or {}
    test = m.get("test") or {}
    return {"roc_auc": cvr.get("roc_auc"), "sensitivity": cvr.get("sensitivity"),
            "specificity": cvr.get("specificity"), "accuracy": test.get("accuracy")}


def _trained(run_dir: Path) -> bool:
    return is_run_folder(run_dir) and (run_dir / "metrics.json").is_file()


def _fit(cfg: TrainConfig, run_dir: Path, log: Any) -> Path:
    if _trained(run_dir):
        log(f"[backdoor] {run_dir} exists, reused")
        return run_dir
    log(f"[backdoor] training {run_dir}")
    return fit(dataclasses.replace(cfg, output=str(run_dir)), progress=False)


def same_split(a: Path, b: Path) -> bool:
    """Whether two runs split the same patients the same way (compared by patient group)."""
    sa = pd.read_csv(a / "split.csv", keep_default_na=False).groupby("group")["split"].first()
    sb = pd.read_csv(b / "split.csv", keep_default_na=False).groupby("group")["split"].first()
    return sa.sort_index().equals(sb.sort_index())


def _measure(rec: dict[str, Any], run: Path, clean: Path, trigger: Trigger, targets: list[str | None]) -> None:
    predictor = Predictor(run, device="cpu")
    images, y = load_test_images(clean, predictor)
    rec["clean"] = clean_metrics(run)
    rec["trigger"] = {str(t): attack_success(predictor, images, y, trigger, t) for t in targets}
    # where the model can see a trigger at all (security/sensitivity.py)
    side = trigger.box(predictor.size, predictor.size)[0]
    sens = input_sensitivity(predictor.model, images[:64], device=predictor.device)
    rec["corner_sensitivity"] = corner_ratios(sens, side.stop - side.start)


def run_experiment(exp: BackdoorExperiment, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """Train every run of ``exp`` into ``out_dir`` (existing runs are reused) and measure each as it is done.

    The order puts what matters first (a clean and a poisoned model, the other clean references, a second attack,
    the fine-tuning runs, then the other attacks), and
    ``out_dir/backdoor.json`` is rewritten after every run, so a stopped experiment keeps its results.

    Returns:
        The result: trigger, shared config and one record per model (kind clean, poisoned or finetuned; clean test
        metrics; attack success rates, see the module docstring).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trigger = Trigger(**exp.trigger).validate()
    base = exp.train_config()
    all_targets = sorted({a.target for a in exp.attacks}, key=str)
    result: dict[str, Any] = {"trigger": dataclasses.asdict(trigger), "train": exp.train, "records": []}
    clean = out / f"clean_s{exp.clean_seeds[0]}"

    def clean_job(seed: int) -> None:
        run = _fit(exp.train_config(seed=seed, split_seed=base.seed), out / f"clean_s{seed}", log)
        rec = {"run": run.name, "kind": "clean", "seed": seed}
        _measure(rec, run, clean, trigger, all_targets)  # a trigger on a clean model: the baseline of every rate
        result["records"].append(rec)

    def attack_job(attack: Attack) -> None:
        data_dir = out / "data" / attack.name
        if not (data_dir / "metadata.csv").is_file():
            poison_split(clean / "split.csv", data_dir, base.image_size,
                         PoisonConfig(attack.fraction, attack.target, trigger, seed=base.seed,
                                      splits=("train", "val") if attack.poison_validation else ("train",)))
        manifest = pd.read_csv(data_dir / "poisoned.csv")
        # the folder's labels are final (a binary task would re-derive them from original_label, undoing the poison)
        cfg = exp.train_config(data=str(data_dir), max_per_class=None, keep_mixed_sites=False, task="multiclass")
        run = _fit(cfg, out / attack.name, log)
        if not same_split(clean, run):
            raise ConfigError(f"{run}: the poisoned run's split differs from the clean run's; poisoning must keep it")
        rec = {"run": run.name, "kind": "poisoned", "attack": attack.name, "target": attack.target,
               "fraction": attack.fraction, "n_poisoned": int(len(manifest)),
               "n_relabelled": int(manifest["relabelled"].sum())}
        _measure(rec, run, clean, trigger, [attack.target])
        result["records"].append(rec)

    def finetune_job(attack: Attack) -> None:
        source = out / attack.name
        cfg = exp.train_config(**{**exp.finetune_train, "init_from": str(source.resolve())})
        run = _fit(cfg, out / f"{attack.name}_finetuned", log)
        rec = {"run": run.name, "kind": "finetuned", "attack": attack.name, "target": attack.target,
               "fraction": attack.fraction}
        _measure(rec, run, clean, trigger, [attack.target])
        result["records"].append(rec)

    jobs: list[tuple[Any, Any]] = [(clean_job, exp.clean_seeds[0])]
    attacks = list(exp.attacks)
    if attacks:
        jobs.append((attack_job, attacks.pop(0)))
    jobs += [(clean_job, s) for s in exp.clean_seeds[1:]]
    jobs += [(attack_job, a) for a in attacks[:1]]
    jobs += [(finetune_job, next(a for a in exp.attacks if a.name == n)) for n in exp.finetune]
    jobs += [(attack_job, a) for a in attacks[1:]]
    for job, arg in jobs:
        job(arg)
        log(f"[backdoor] {json.dumps(result['records'][-1])}")
        (out / "backdoor.json").write_text(json.dumps(result, indent=2))
    return result


def read_experiment(out_dir: Path) -> dict[str, Any]:
    """The ``backdoor.json`` of a finished experiment (what ``security detectors`` and ``defences`` measure).

    Raises:
        DataError: there is none (the message names the command that writes it).
    """
    path = out_dir / "backdoor.json"
    if not path.is_file():
        raise DataError(f"{out_dir} has no backdoor.json: run 'covidscreen security backdoor CONFIG -o {out_dir}' "
                        "first")
    return json.loads(path.read_text())


def model_roc(judged: list[dict[str, Any]], records: list[dict[str, Any]]) -> dict[str, Any]:
    """ROC over models of each model-level score (backdoored = positive: a poisoned or fine-tuned model whose
    attack succeeds on more than half of the triggered test images; clean models negative): AUC and the points."""

    asr = {r["run"]: max(v["attack_success_rate"] for v in r["trigger"].values()) for r in records}
    rows = [m for m in judged if m["kind"] == "clean" or asr.get(m["run"], 0) > 0.5]
    truth = np.array([m["kind"] != "clean" for m in rows])
    out: dict[str, Any] = {"positives": [m["run"] for m in rows if m["kind"] != "clean"],
                           "negatives": [m["run"] for m in rows if m["kind"] == "clean"]}
    scores = {"patch_best": [m["patch_best"] for m in rows], "mmbd_statistic": [m["mmbd_statistic"] for m in rows],
              "reversed_trigger_smallness": [-m["min_ratio"] for m in rows]}  # smaller trigger = more suspect
    for name, values in scores.items():
        if truth.all() or not truth.any():
            out[name] = {"auc": None}
            continue
        fpr, tpr, thr = roc_curve(truth, values)
        out[name] = {"auc": float(roc_auc_score(truth, values)), "fpr": fpr.tolist(), "tpr": tpr.tolist(),
                     "thresholds": [float(t) for t in thr]}
    return out


def evaluate_detectors(out_dir: str | Path, frr: float = 0.01, strip_modes: tuple[str, ...] = ("add",),
                       nc_steps: int = 100, nc_images: int = 16, expected_fraction: float = 0.1,
                       log: Any = print, mmbd_steps: int = 300) -> dict[str, Any]:
    """Run the three scans on every model of a finished experiment and measure them against the known truth.

    - STRIP: false rejections on the clean test images, detections on the triggered ones (non-target classes for a
      targeted attack), calibrated on each run's validation images at ``frr``;
    - model scan: every model judged against the clean references other than itself (clean_s0 is judged against
      the other clean seeds, so "no clean model flagged" is tested on a model outside the references);
    - training-set scan: precision and recall of the flagged training images against ``poisoned.csv``.

    Writes ``out_dir/detectors.json``.
    """
    out = Path(out_dir)
    result = read_experiment(out)
    trigger = Trigger(**result["trigger"])
    records = result["records"]
    clean_runs = [out / r["run"] for r in records if r["kind"] == "clean"]
    clean = clean_runs[0]
    found: dict[str, Any] = {"frr": frr, "strip": [], "model": [], "data": []}

    def save() -> None:
        (out / "detectors.json").write_text(json.dumps(found, indent=2, default=float))

    sizes, patches, margins = {}, {}, {}
    for i, rec in enumerate(records):
        run = out / rec["run"]
        log(f"[detectors] model {i + 1}/{len(records)}: {rec['run']}")
        sizes[rec["run"]] = model_mask_sizes(run, n_per_class=nc_images, steps=nc_steps, progress=True)
        patches[rec["run"]] = model_patch_success(run, progress=True)
        margins[rec["run"]] = model_max_margins(run, steps=mmbd_steps, progress=True)
        log(f"[detectors] reversed triggers of {rec['run']}: {sizes[rec['run']]}; best patches: "
            f"{patches[rec['run']]}; MM-BD margins: {margins[rec['run']]}")
    for rec in records:
        others = [c.name for c in clean_runs if c.name != rec["run"]]  # a clean model is judged against the others
        if not others:
            continue
        verdict = judge(sizes[rec["run"]], [sizes[c] for c in others])
        patch = judge_patches(patches[rec["run"]], [patches[c] for c in others])
        mmbd = judge_mmbd(margins[rec["run"]], [margins[c] for c in others])
        found["model"].append({"run": rec["run"], "kind": rec["kind"], "attack": rec.get("attack"),
                               **verdict.as_dict(), "reference_loo_ratios": leave_one_out_ratios(
                                   [sizes[c] for c in others]),
                               **patch.as_dict(), **mmbd.as_dict(),
                               "either_flagged": verdict.flagged or patch.flagged or mmbd.flagged})
    found["model_roc"] = model_roc(found["model"], records)
    save()
    for rec in records:
        if rec["kind"] == "clean" and rec["run"] != clean.name:
            continue
        run = out / rec["run"]
        predictor = Predictor(run, device="cpu")
        images, y = load_test_images(clean, predictor)
        target = rec.get("target") if rec["kind"] != "clean" else next(
            (r.get("target") for r in records if r["kind"] == "poisoned"), None)
        keep = np.ones(len(y), dtype=bool) if target is None else y != predictor.classes.index(target)
        stamped = trigger.apply(images[keep])
        decided = np.array([predictor.classes.index(c) for c in predictor.decide(predictor.predict_arrays(stamped))])
        success = (decided != y[keep]) if target is None else (decided == predictor.classes.index(target))
        for mode in strip_modes:
            det = strip_detector(run, predictor, frr=frr, mode=mode)
            clean_flags, _ = det.flags(images)
            trig_flags, _ = det.flags(stamped)
            found["strip"].append({
                "run": rec["run"], "kind": rec["kind"], "attack": rec.get("attack"), "mode": mode,
                "threshold": det.threshold, "false_rejection_clean_test": float(clean_flags.mean()),
                "detection_triggered": float(trig_flags.mean()),
                "detection_successful_attacks": float(trig_flags[success].mean()) if success.any() else None,
                "n_triggered": int(len(stamped)), "n_successful": int(success.sum())})
            log(f"[detectors] STRIP {found['strip'][-1]}")
            save()
    for rec in records:
        if rec["kind"] != "poisoned":
            continue
        run, data_dir = out / rec["run"], out / "data" / rec["attack"]
        manifest = pd.read_csv(data_dir / "poisoned.csv")
        table = scan_data(run, data_dir, expected_fraction=expected_fraction)
        stamped = table["path"].isin(set(manifest["path"])).to_numpy()
        relabelled = table["path"].isin(set(manifest.loc[manifest["relabelled"], "path"])).to_numpy()
        entry = {"run": rec["run"], "attack": rec["attack"], "fraction": rec["fraction"], "images": len(table),
                 "expected_fraction": expected_fraction}
        for name, flags in (("spectral", table["spectral_flag"].to_numpy()),
                            ("spectre", table["spectre_flag"].to_numpy()),
                            ("clustering", table["cluster_flag"].to_numpy()),
                            ("transplant", table["transplant_flag"].to_numpy())):
            entry[name] = {"relabelled": precision_recall(flags, relabelled),
                           "stamped": precision_recall(flags, stamped)}
        rank = np.flatnonzero(relabelled)  # positions in the table, sorted by score: how high the poison ranks
        entry["relabelled_ranks"] = rank.tolist()
        found["data"].append(entry)
        log(f"[detectors] training-set scan {entry}")
        save()
    return found


def test_figures(predictor: Predictor, images: np.ndarray, y: np.ndarray,
                 per_image: dict[str, Any] | None = None) -> dict[str, float]:
    """Clean test figures of a model computed the same way for every model (before and after a defence): AUC of
    COVID vs rest, sensitivity and specificity of the decisions ``predict`` makes, accuracy. ``per_image``, a dict,
    receives each image's COVID probability and decision (:func:`~covidscreen.security.defence_report.image_figures`,
    what the paired comparison of a defence reads)."""

    probs = predictor.predict_arrays(images)
    decided = np.array([predictor.classes.index(c) for c in predictor.decide(probs)])
    pos = predictor.classes.index("covid") if "covid" in predictor.classes else 0
    truth, called = y == pos, decided == pos
    if per_image is not None:
        per_image.update(image_figures(probs, decided, pos))
    return {"roc_auc": float(roc_auc_score(truth, probs[:, pos])), "sensitivity": float(called[truth].mean()),
            "specificity": float((~called[~truth]).mean()), "accuracy": float((decided == y).mean())}


def write_clean_set(clean_run: Path, out_dir: Path, share: float = 0.05, seed: int = 0) -> Path:
    """The defender's clean data: a stratified sample of the clean run's *validation* images (never its test images)
    of ``share`` of its training set's size, written as a data folder (``metadata.csv`` with absolute paths)."""
    split = pd.read_csv(clean_run / "split.csv", keep_default_na=False)
    n = int(share * int((split["split"] == "train").sum()))
    val = split[split["split"] == "val"]
    frac = n / len(val)
    rows = pd.concat([g.sample(n=max(1, int(round(frac * len(g)))), random_state=seed)
                      for _, g in val.groupby("label", sort=True)]).head(n)
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": rows["path"], "label": rows["label"],
                  "patient_id": rows["group"]}).to_csv(out_dir / "metadata.csv", index=False)
    return out_dir


def sanitized_folder(out: Path, run: str, label: str) -> Path:
    """Where ``security defences`` writes the model ``run`` sanitized as ``label`` (the method and its settings): a
    setting's value may hold characters a folder name should not (a list: ``nad_betas=(500.0, 1000.0)``), so
    anything but letters, digits and ``._=+,-`` becomes ``_``; the label itself is kept in ``defences.json``."""
    return out / "sanitized" / re.sub(r"[^A-Za-z0-9._=+,-]", "_", f"{run}__{label}")


def evaluate_defences(out_dir: str | Path, methods: tuple[str, ...] = ("fine-pruning", "nad", "i-bau"),
                      runs: list[str] | None = None, log: Any = print,
                      settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sanitize every model of a finished experiment with each defence and measure it (``defences.json``).

    The clean set is 5% of the training set's size, sampled from the clean run's validation split
    (:func:`write_clean_set`); each model is measured before and after on the clean test images (AUC, sensitivity,
    specificity, :func:`test_figures`) and with the trigger stamped (attack success, :func:`attack_success`).
    Sanitized runs are kept in ``out_dir/sanitized/<run>__<method>`` and reused when present. ``settings``
    (:class:`SanitizeConfig` fields other than the defaults) apply to every method; the results are then kept
    under ``<method>+<key>=<value>,...``, beside those of the defaults.
    """
    # sanitize builds on this module's experiment helpers: imported here to keep them acyclic
    from .sanitize import sanitize, sanitize_config

    # an unknown name or setting is refused before any model is measured
    configs = {method: sanitize_config(method, settings) for method in methods}
    suffix = "+" + ",".join(f"{k}={getattr(configs[methods[0]], k)}" for k in sorted(settings)) if (
        settings and methods) else ""
    out = Path(out_dir)
    result = read_experiment(out)
    trigger = Trigger(**result["trigger"])
    records = [r for r in result["records"] if runs is None or r["run"] in runs]
    clean = out / next(r["run"] for r in result["records"] if r["kind"] == "clean")
    clean_dir = write_clean_set(clean, out / "clean_set")
    all_targets = sorted({r.get("target") for r in result["records"] if r["kind"] != "clean"}, key=str)
    path = out / "defences.json"
    found: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    found["clean_set"] = str(clean_dir)
    found.setdefault("models", {})

    def measure(run: Path, targets: list[str | None]) -> dict[str, Any]:
        predictor = Predictor(run, device="cpu")
        images, y = load_test_images(clean, predictor)
        per_image: dict[str, Any] = {}
        figures = test_figures(predictor, images, y, per_image)
        found["test_truth"] = [bool(v) for v in y == (predictor.classes.index("covid") if "covid" in
                                                       predictor.classes else 0)]
        return {"test": figures, "images": per_image,
                "trigger": {str(t): attack_success(predictor, images, y, trigger, t) for t in targets}}

    def save() -> None:
        path.write_text(json.dumps(found, indent=2, default=float))

    clean_rec = next(r for r in result["records"] if r["kind"] == "clean")
    for rec in [clean_rec] + [r for r in records if r is not clean_rec]:
        measured = rec in records  # the clean model is measured in any case: its attack success is the floor
        targets = all_targets if rec["kind"] == "clean" else [rec.get("target")]
        entry = found["models"].setdefault(rec["run"], {"kind": rec["kind"], "attack": rec.get("attack")})
        if "images" not in entry.get("before", {}):  # defences.json of an earlier version: no per-image figures
            entry["before"] = measure(out / rec["run"], targets)
        for method in methods if measured else ():
            label = method + suffix
            if label in entry.get("after", {}):
                continue
            target = sanitized_folder(out, rec["run"], label)
            if not is_run_folder(target):
                log(f"[defences] {rec['run']}: {label}")
                sanitize(out / rec["run"], clean_dir, target, configs[method], progress=False)
            entry.setdefault("after", {})[label] = {
                **measure(target, targets), "sanitize": json.loads((target / "sanitize.json").read_text())}
            log(f"[defences] {rec['run']} {label}: {json.dumps(entry['after'][label]['trigger'])} "
                f"{json.dumps(entry['after'][label]['test'])}")
            save()
    judge_all(out, found, clean_rec["run"], measure)
    save()
    return found


def judge_all(out: Path, found: dict[str, Any], clean_run: str, measure: Any) -> None:
    """Each sanitized model of ``found`` against the issue's goal (:mod:`.defence_report`), as ``after[label]
    ["judged"]``; a sanitized run measured by an earlier version (no per-image figures) is measured again when its
    folder is still there, else left unjudged."""
    truth = np.array(found["test_truth"], dtype=bool)
    floor = found["models"][clean_run]["before"]["trigger"]
    for run, entry in found["models"].items():
        target = str(None) if entry["kind"] == "clean" else next(iter(entry["before"]["trigger"]))
        for label, after in entry.get("after", {}).items():
            folder = sanitized_folder(out, run, label)
            if "images" not in after:
                if not is_run_folder(folder):
                    continue
                after.update(measure(folder, [None if t == "None" else t for t in after["trigger"]]))
            attack = None if entry["kind"] == "clean" else attack_figure(after["trigger"][target])
            clean_rate = attack_figure(floor[target])["rate"] if target in floor and attack else None
            after["judged"] = judge_defence(paired_changes(entry["before"]["images"], after["images"], truth),
                                            attack, clean_rate)
