"""``fit``: from a :class:`TrainConfig` to a complete run folder.

A run folder holds: ``model.safetensors`` + ``model.json`` (checkpoint and sidecar), ``config.yaml`` (resolved),
``split.csv`` (every image with its split), ``history.csv`` (per-epoch losses and validation metrics),
``predictions.csv`` (validation and test probabilities), ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml

from ..config import TrainConfig, to_dict
from ..data.augment import AugmentConfig
from ..data.cache import ImageCache
from ..data.decode import is_dicom
from ..data.locate import DEFAULT_DATASET, resolve_data_dir
from ..data.modality import table_modality
from ..data.splits import read_split_file, split_fingerprint
from ..data.table import class_names, load_table
from ..errors import ConfigError, DataError
from ..evaluation.assess import evaluate_fit_predictions
from ..evaluation.metrics import headline_auc
from ..inference.checkpoint import save_checkpoint
from ..models import create_model, get_spec
from ..runtime import (
    Precision,
    atomic_write_csv,
    atomic_write_text,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from ..training import distributed
from ..training.adversarial import FeatureTap, adversarial_step
from ..training.finetune import HeadWarmup, discriminative_param_groups, set_trainable_stages
from ..training.loop import (
    Optimisation,
    TrainStep,
    classification_step,
    cosine_with_warmup,
    predict_probs,
    train_one_epoch,
)
from ..training.losses import criterion
from ..training.mixup import BatchMixer
from ..training.optimizers import build_optimizer
from ..training.sampling import effective_batch_size, epoch_rows
from ..training.site_contrast import WithinSiteRankLoss, site_groups
from ..training.subsets import (
    apply_task,
    assign_splits,
    filter_rows,
    subsample_per_class,
    training_patient_subset,
)
from .finalize import finalize_run
from .frozen_head import fit_frozen_head
from .generalisation import (  # generalisation to unseen sites (docs/generalisation.md)
    add_within_site,
    attach_preprocessing,
    build_adversary,
    load_run_segmenter,
    probe_sites,
    run_preprocess,
    selection_score,
    site_balanced_rows,
    subsample_keep_mixed_sites,
)
from .grouping import group_near_duplicates, held_out_near_copies
from .holdout import exclude_site
from .init_from import check_no_leak, load_trunk
from .resume import (
    EpochCheckpoints,
    after_training,
    continue_on_run_split,
    discard_training_state,
    training_interrupts,
)
from .skipped import leave_out_changed_files
from .timing import PhaseTimer


@dataclass
class PreparedData:
    """A table with its split, decoded images and class indices, ready for training."""

    table: pd.DataFrame  # rows that decoded, with 'split' and 'y' columns
    classes: list[str]
    cache: ImageCache
    rows: np.ndarray  # row of each table entry in cache.images
    skipped: pd.DataFrame  # files that could not be decoded: path, error
    fingerprint: str
    data_dir: Path
    preprocess: Any = None  # the run's PreprocessConfig
    modality: str = "cxr"  # what the model reads (cxr | ct), recorded in the sidecar


def log(msg: str) -> None:
    print(msg, flush=True)


def prepare_data(cfg: TrainConfig, progress: bool = True) -> PreparedData:
    """Load, subsample, cache (decode once) and split the data of a training config.

    The subsample and the split use ``split_seed`` (default: ``seed``); the task, training share and site/label
    filters are applied as :mod:`covidscreen.training.subsets` explains, so that runs differing in those options
    share their validation and test images.
    """
    data_dir = resolve_data_dir(cfg.data, cfg.modality or DEFAULT_DATASET)  # modality ct: the data root's ct/
    data_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    table = load_table(data_dir)
    modality, modality_source = table_modality(table, cfg.modality)
    log(f"modality: {modality} (from {modality_source})")
    held = None
    if cfg.holdout_site:  # leave-one-site-out: the site is evaluated as external data at the end
        held = table[table["site"] == cfg.holdout_site]
        table = exclude_site(table, cfg.holdout_site)
    if table.attrs.get("missing"):
        log(f"warning: {table.attrs['missing']} image(s) listed in metadata.csv do not exist and were skipped")
    if cfg.max_per_class:
        table = (subsample_keep_mixed_sites(table, cfg.max_per_class, cfg.positive_class, data_seed)
                 if cfg.keep_mixed_sites else subsample_per_class(table, cfg.max_per_class, data_seed))
    table = apply_task(table, cfg.task, cfg.positive_class)
    pp = run_preprocess(cfg)  # lung ROI / intensity / border crop, part of the cache key
    if pp.ct_windows is not None:
        check_ct_window_data(table, modality, pp)
    cache = ImageCache(table["path"].tolist(), cfg.image_size, cfg.cache_dir, progress=progress, preprocess=pp,
                       segmenter=load_run_segmenter(pp))
    if cache.stats.get("roi_fallback"):
        log(f"warning: no lungs found in {cache.stats['roi_fallback']} image(s); they were used whole, unmasked")
    ok = cache.ok
    skipped = pd.DataFrame({"path": table["path"][~ok], "error": [cache.errors[p] for p in table["path"][~ok]],
                            "stage": "decode"})
    if len(skipped):
        log(f"warning: {len(skipped)} image(s) could not be decoded and were skipped (listed in skipped.csv), e.g. "
            f"{skipped['error'].iloc[0]}")
    all_paths = table["path"].tolist()  # the cache's paths: the near-duplicate search shares its key
    table = table[ok].reset_index(drop=True)
    table = split_table(cfg, table, all_paths, held, data_seed, progress)
    table["split"] = training_patient_subset(table, table["split"], cfg.train_fraction, data_seed)
    table = table[filter_rows(table, cfg.sites, cfg.labels)].reset_index(drop=True)
    classes = class_names(table)
    table["y"] = table["label"].map({c: i for i, c in enumerate(classes)})
    for s in ("train", "val"):
        if (table["split"] == s).sum() == 0:
            groups = table["group"].nunique() if "group" in table else len(table)
            joined = (f" (near-duplicate grouping joined them into {groups} group(s) that are never split; if the "
                      f"images are copies by design, set group_near_duplicates: false)"
                      if cfg.group_near_duplicates and groups < len(table) else "")
            raise DataError(f"the {s} split is empty: {len(table)} images are too few for split {cfg.split}{joined}")
    return PreparedData(
        table=table,
        classes=classes,
        cache=cache,
        rows=cache.rows(table["path"].tolist()),
        skipped=skipped,
        fingerprint=split_fingerprint(table, table["split"]),
        data_dir=Path(data_dir).resolve(),
        preprocess=pp,
        modality=modality,
    )


def split_table(cfg: TrainConfig, table: pd.DataFrame, all_paths: list[str], held: pd.DataFrame | None,
                data_seed: int, progress: bool = True) -> pd.DataFrame:
    """``table`` with its ``split``: the user's ``split_file`` as given, else a patient-grouped split (or fold) whose
    groups join patients with near-duplicate images (``group_near_duplicates``); with a held-out site, images linked
    to one of its images are left ``unused``, so that the external evaluation holds no near-copy of a training
    image."""
    if cfg.split_file:
        split, counts = read_split_file(cfg.split_file, table)
        log(f"split: as given by {cfg.split_file} (not regrouped; the audit checks it)"
            + (f"; {counts['not_listed']} image(s) of the data are not listed and stay unused" if counts["not_listed"]
               else "") + (f"; {counts['not_in_data']} listed image(s) are not in the data" if counts["not_in_data"]
                           else ""))
        return table.assign(split=split.to_numpy())
    if cfg.group_near_duplicates:
        table = group_near_duplicates(table, all_paths, cfg.cache_dir, progress, log)
    table["split"] = assign_splits(table, cfg.split, data_seed, cfg.folds, cfg.fold)
    if held is not None and cfg.group_near_duplicates and len(held):
        if cfg.max_per_class:  # the images evaluate_holdout_site scores
            held = subsample_per_class(held, cfg.max_per_class, cfg.seed)
        linked = held_out_near_copies(table, held, cfg.cache_dir, progress)
        if linked.any():
            log(f"holdout_site {cfg.holdout_site}: {int(linked.sum())} image(s) of other sites are near-duplicates "
                "of its images (or share a patient with one); they are left unused")
            table.loc[linked, "split"] = "unused"
    return table


def check_ct_window_data(table: pd.DataFrame, modality: str, pp: Any) -> None:
    """Several CT windows need Hounsfield units: CT data, every image a DICOM file (a PNG/JPEG slice was windowed
    by whoever made it, so there is nothing to compute a second window from).

    Raises:
        ConfigError: the data is not CT, or some images are not DICOM.
    """
    if modality != "ct":
        raise ConfigError(f"ct_channels {pp.ct_channels} reads CT windows, but the data is {modality}; use "
                          "ct_channels lung")
    not_dicom = [p for p in table["path"] if not is_dicom(Path(p))]
    if not_dicom:
        raise ConfigError(f"ct_channels {pp.ct_channels} needs DICOM CT slices (Hounsfield units), but "
                          f"{len(not_dicom)} of {len(table)} images are not DICOM (e.g. {not_dicom[0]}): PNG/JPEG "
                          "slices were windowed by whoever made them and carry no HU; train with ct_channels lung")


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def fit_single(cfg: TrainConfig, progress: bool = True) -> Path:
    """One run (no k-fold): prepare the data, build the model and its training, train with epoch selection on
    validation, then finish the run (operating points chosen on validation, test metrics, checkpoint) and finalize
    it (audit, held-out site, report, model card).

    Returns:
        The run folder.
    """
    cfg = cfg.validate()
    get_spec(cfg.model)  # fail fast on an unknown model name, before any data is read
    t0 = time.time()
    keep_freed_memory()  # activations reuse heap pages instead of an mmap and page faults per step (runtime.py)
    world = distributed.start()  # one process unless launched by torchrun (docs/performance.md)
    progress = progress and world.is_main
    generator = seed_everything(cfg.seed)  # the same seed on every rank: same split, weights and epoch order
    rng = np.random.default_rng(cfg.seed)
    device = world.local_device(resolve_device(cfg.device))
    precision = resolve_precision(device, cfg.precision, cfg.amp)  # detected once; logged and kept in the sidecar
    amp = precision.dtype
    out_dir = Path(cfg.output) if cfg.output else default_run_dir(cfg)
    run_dir = world.run_dir(out_dir)
    timer = PhaseTimer()
    with new_run_folder(run_dir):  # bad data, weights or options leave no empty run folder behind
        with timer.phase("cache"), world.main_first():  # one rank per machine builds the cache first
            data = continue_on_run_split(run_dir, prepare_data(cfg, progress=progress), log)  # same split if resumed
        write_split(run_dir, data, cfg)
        log_precision(precision, cfg)
        model, init_from = build_model(cfg, data, device, amp)
    if cfg.head != "finetune":  # a scikit-learn head on frozen trunk features instead of epochs
        history = fit_frozen_head(cfg, data, model, device, progress, log)
        result = finish_run(run_dir, model, data, cfg, device, amp, 1, history, progress, init_from,
                            precision=precision)
        finalize_run(run_dir, cfg, data, model, device, progress, log)
        log(f"done in {(time.time() - t0) / 60:.1f} min: {run_dir}")
        return result
    setup = build_training(cfg, data, model, device, amp, generator)
    setup.opt, setup.world = distributed.adapt(setup.opt, world, cfg), world
    # Ctrl-C: stop, keep the last complete epoch, say how to continue
    with timer.phase("epochs"), training_interrupts(run_dir):
        selected = train_epochs(cfg, data, setup, rng, run_dir, progress)
    model.load_state_dict(selected.state)
    replicas = distributed.check_replicas(model, world)
    if not world.is_main:  # rank 0 evaluates and writes the run; this rank's scratch copies go
        distributed.stop(world)
        shutil.rmtree(run_dir, ignore_errors=True)
        return out_dir

    with after_training(run_dir):  # an error from here on names `covidscreen finish RUN_DIR`
        with timer.phase("evaluation"):
            result = finish_run(run_dir, model, data, cfg, device, amp, selected.epoch, selected.history, progress,
                                init_from, selected.val_probs, precision)
        # audit, held-out site, report, model card
        finalize_run(run_dir, cfg, data, model, device, progress, log, timer=timer)
    discard_training_state(run_dir)  # model.safetensors holds the selected weights; `finish` can redo the rest
    timer.write(run_dir)
    if world.distributed:
        write_distributed(run_dir, world, setup.opt.batch_size, replicas)
        distributed.stop(world)
    log(timer.summary())
    log(f"done in {(time.time() - t0) / 60:.1f} min: {run_dir}")
    return result


def log_precision(precision: Precision, cfg: TrainConfig) -> None:
    """Say how the run trains (and why it may be slow), before the first epoch."""
    what = "training steps and per-epoch validation" if cfg.head == "finetune" else "nothing (frozen-feature head)"
    log(f"precision: {precision.describe()}: {what}; final predictions in exact float32")
    if precision.warning:
        log(f"warning: {precision.warning}")


def write_split(run_dir: Path, data: PreparedData, cfg: TrainConfig) -> None:
    """Log the split and write ``split.csv`` (and ``skipped.csv``: files that could not be decoded)."""
    table = data.table
    counts = table.groupby(["split", "label"]).size().unstack(fill_value=0)
    split_seed = cfg.seed if cfg.split_seed is None else cfg.split_seed
    how = f"fold {cfg.fold} of {cfg.folds}, seed {split_seed}" if cfg.folds else f"seed {split_seed}"
    log(f"data: {data.data_dir} | {len(table)} images, classes {data.classes} | split (patient-grouped, {how}):\n"
        f"{counts.to_string()}")
    atomic_write_csv(run_dir / "split.csv", table.drop(columns=["y"]))
    if len(data.skipped):
        atomic_write_csv(run_dir / "skipped.csv", data.skipped)


@contextmanager
def new_run_folder(run_dir: Path) -> Iterator[None]:
    """Create ``run_dir`` for the setup of a run (data, split, model); if the setup fails and the folder did not
    exist before, remove it again (and its parents this call made), with what the setup wrote into it. A folder that
    existed (a run being resumed, a folder the user made) is left as it is."""
    created = None if run_dir.exists() else run_dir  # the outermost folder this call makes (runs/ too, if new)
    while created is not None and not created.parent.exists():
        created = created.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created is not None:
            shutil.rmtree(run_dir, ignore_errors=True)
            # then the parents this call made, only while empty (another run may have started in runs/ meanwhile)
            for parent in run_dir.parents:
                if len(parent.parts) < len(created.parts):  # above the outermost folder this call made
                    break
                try:
                    parent.rmdir()
                except OSError:
                    break
        raise


def build_model(cfg: TrainConfig, data: PreparedData, device: torch.device, amp: torch.dtype | None
                ) -> tuple[torch.nn.Module, dict | None]:
    """The network with its pretrained (or earlier run's) weights and the stages to fine-tune, on ``device``."""
    model = create_model(cfg.model, pretrained=cfg.pretrained and not cfg.init_from, num_classes=len(data.classes),
                         weights_path=cfg.weights)
    init_from = None
    if cfg.init_from:
        check_no_leak(cfg.init_from, data.table, data.data_dir)
        init_from = load_trunk(model, cfg.init_from)
        log(f"init_from: trunk weights of {init_from['run_dir']} (trained for {init_from['classes']}), new head")
    trained = set_trainable_stages(model, cfg.train_stages)
    model = model.to(device).to(memory_format=torch.channels_last)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    init_name = "earlier run" if init_from else "ImageNet" if cfg.pretrained or cfg.weights else "random"
    log(f"model: {cfg.model} ({init_name} init), training "
        f"{n_train:,} parameters in {', '.join(trained)}; device {device}{', AMP ' + str(amp) if amp else ''}")
    return model, init_from


@dataclass
class TrainingSetup:
    """Everything the epochs of a run share: the optimisation state, the losses, how each epoch's images are drawn
    and what each batch computes."""

    opt: Optimisation
    eval_loss: torch.nn.Module
    loss_fn: torch.nn.Module
    warmup: HeadWarmup
    train_idx: np.ndarray
    drawn: int | None
    adversary: tuple[Any, np.ndarray, list[str]] | None  # site adversary, site index per row, site names
    groups: np.ndarray | None  # site group per row for the within-site ranking loss
    world: distributed.World = dataclasses.field(default_factory=distributed.World)  # ranks under torchrun

    @contextmanager
    def epoch_step(self, cfg: TrainConfig, epoch: int) -> Iterator[tuple[TrainStep, dict[str, np.ndarray]]]:
        """This epoch's per-batch step and the per-row columns it needs: the adversarial step (its feature tap
        held for the epoch) when there is a site adversary, else the plain classification step."""
        model, device, amp = self.opt.model, self.opt.device, self.opt.amp
        if self.adversary is None:
            extras = {} if self.groups is None else {"groups": self.groups}
            # under torchrun, DistributedDataParallel averages the gradients of the ranks' shares of each batch
            yield classification_step(self.world.wrap(model, device), self.loss_fn, device, amp), extras
            return
        with FeatureTap(model) as tap:
            yield (adversarial_step(model, self.adversary[0], self.loss_fn, tap, cfg.adversarial_weight,
                                    (epoch - 1) / cfg.epochs, epoch / cfg.epochs, device, amp),
                   {"sites": self.adversary[1]})


def build_training(cfg: TrainConfig, data: PreparedData, model: torch.nn.Module, device: torch.device,
                   amp: torch.dtype | None, generator: torch.Generator) -> TrainingSetup:
    """Losses, optimiser with its schedule, mixing, and the optional site adversary or within-site ranking loss."""
    table, classes = data.table, data.classes
    y_all = table["y"].to_numpy()
    train_idx = np.flatnonzero((table["split"] == "train").to_numpy())
    # site-balanced sampling already balances the labels, so the loss is not re-weighted on top
    loss_cfg = dataclasses.replace(cfg, class_weights=False) if cfg.site_balanced else cfg
    loss_fn = criterion(loss_cfg, classes, y_all[train_idx]).to(device)
    eval_loss = criterion(loss_cfg, classes, y_all[train_idx]).to(device)
    mixer = BatchMixer(len(classes), cfg.mixup_alpha, cfg.cutmix_alpha, seed=cfg.seed)
    adversary = build_adversary(cfg, model, table, train_idx, len(classes), device)  # None unless weight > 0
    groups = None
    if cfg.within_site_rank_weight > 0:  # rank positives above the other images of their own site
        if cfg.positive_class not in classes:
            raise ConfigError(f"within_site_rank_weight > 0 needs positive_class '{cfg.positive_class}' among the "
                              f"classes {classes}")
        groups = site_groups(table, train_idx, cfg.positive_class)
        loss_fn = WithinSiteRankLoss(loss_fn, cfg.within_site_rank_weight, classes.index(cfg.positive_class))

    # images per epoch: samples_per_epoch, but never more than the training split holds, whatever the sampler; the
    # samplers that draw with replacement would otherwise give an epoch several times longer than plain shuffling,
    # and variants compared at the same number of epochs would differ in training steps
    drawn = None if cfg.samples_per_epoch is None else min(cfg.samples_per_epoch, len(train_idx))
    epoch_length = len(epoch_rows(train_idx, y_all[train_idx], drawn, np.random.default_rng(0),
                                  cfg.sampler))
    batch_size = effective_batch_size(cfg.batch_size, epoch_length)
    if batch_size < cfg.batch_size:
        log(f"warning: an epoch holds only {epoch_length} training images: batch size {batch_size} instead of "
            f"{cfg.batch_size}")
    total_steps = max(1, epoch_length // batch_size * cfg.epochs)
    optimizer = build_optimizer(cfg.optimizer, discriminative_param_groups(model, cfg.lr, cfg.lr_decay), cfg.lr,
                                cfg.weight_decay)
    warmup = HeadWarmup(model, cfg.head_warmup_epochs)
    if adversary is not None:
        optimizer.add_param_group({"params": list(adversary[0].parameters())})
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, int(cfg.warmup_fraction * total_steps)))
    opt = Optimisation(model, optimizer, scheduler, device, batch_size, generator,
                       augment=AugmentConfig() if cfg.augment else None, amp=amp,
                       scaler=torch.amp.GradScaler("cuda") if amp == torch.float16 else None,
                       mixer=mixer if mixer.active else None)
    return TrainingSetup(opt, eval_loss, loss_fn, warmup, train_idx, drawn, adversary, groups)


def epoch_order(cfg: TrainConfig, data: PreparedData, setup: TrainingSetup, rng: np.random.Generator) -> np.ndarray:
    """The table rows of one epoch, in training order (sampled as the config says)."""
    y_all = data.table["y"].to_numpy()
    if cfg.site_balanced:
        return site_balanced_rows(setup.train_idx, y_all, data.table["site"].to_numpy(), setup.drawn, rng)
    return epoch_rows(setup.train_idx, y_all[setup.train_idx], setup.drawn, rng, cfg.sampler)


def validate(cfg: TrainConfig, data: PreparedData, setup: TrainingSetup, progress: bool) -> dict[str, Any]:
    """Validation loss, pooled AUC, accuracy, within-site AUC, the score that selects the epoch, and the validation
    probabilities (``probs``, keyed by cache row in ``rows``), which :func:`finish_run` reuses for the epoch kept."""
    is_val = (data.table["split"] == "val").to_numpy()
    device = setup.opt.device
    # exact float32, as finish_run predicts: the kept epoch's validation predictions are the run's final ones
    probs = predict_probs(setup.opt.model, data.cache.images, data.rows[is_val], device, cfg.eval_batch_size,
                          None, desc="validate", progress=progress)
    y_val = data.table["y"].to_numpy()[is_val]
    with torch.no_grad():
        loss = float(setup.eval_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)).float().to(device),
                                     torch.from_numpy(y_val).to(device)).item()) if len(y_val) else float("nan")
    auc = headline_auc(y_val, probs, data.classes, cfg.positive_class)
    # the selection score is the pooled AUC, or the within-site AUC with select_on: within_site_auc
    score, within = selection_score(cfg, auc, y_val, probs, data.table["site"].to_numpy()[is_val], data.classes)
    return {"loss": loss, "auc": auc, "accuracy": float(np.mean(probs.argmax(1) == y_val)),
            "within_site_auc": within, "score": score, "probs": probs, "rows": data.rows[is_val]}


@dataclass
class Selection:
    """The epoch kept: its weights, its number, and the history of every epoch run."""

    state: dict[str, torch.Tensor]
    epoch: int
    history: list[dict[str, Any]]
    val_probs: ValidationProbs | None = None  # of the kept epoch (None: it was kept before a resume)


@dataclass
class ValidationProbs:
    """Validation probabilities of one epoch's weights, keyed by cache row (robust to rows left out later)."""

    rows: np.ndarray
    probs: np.ndarray

    def lookup(self, rows: np.ndarray) -> np.ndarray | None:
        """The probabilities of ``rows`` (cache rows), or None when some were not validated."""
        where = {int(r): i for i, r in enumerate(self.rows)}
        if not all(int(r) in where for r in rows):
            return None
        return self.probs[[where[int(r)] for r in rows]]


def train_epochs(cfg: TrainConfig, data: PreparedData, setup: TrainingSetup, rng: np.random.Generator,
                 run_dir: Path, progress: bool) -> Selection:
    """Train epoch by epoch, keep the weights of the best validation score, stop early after ``patience`` epochs
    without improvement; ``history.csv`` is rewritten after every epoch."""
    model = setup.opt.model
    y_all = data.table["y"].to_numpy()
    ckpt = EpochCheckpoints(run_dir, cfg, data, setup, rng, log)  # continues from RUN_DIR/resume when it exists
    best_score, best_state, best_epoch, stale, history = ckpt.resume()
    best_val = None  # the kept epoch's validation probabilities, reused by finish_run
    for epoch in ckpt.epochs():
        te = time.time()
        if setup.warmup.set_epoch(epoch):
            log(f"epoch {epoch}: head warm-up (trunk frozen)")
        # under torchrun: this rank's share of every global batch of the epoch (training/distributed.py)
        drawn = epoch_order(cfg, data, setup, rng)
        order = setup.world.shard(drawn, setup.opt.batch_size * setup.world.world_size)
        with setup.epoch_step(cfg, epoch) as (step, extras):
            stats = train_one_epoch(setup.opt, data.cache.images, data.rows[order], y_all[order], step,
                                    {k: v[order] for k, v in extras.items()}, desc=f"epoch {epoch}/{cfg.epochs}",
                                    progress=progress)
        train_loss = stats.pop("loss")
        if setup.adversary is not None:
            log(f"  site adversary: loss {stats['site_loss']:.4f}, site accuracy {stats['site_accuracy']:.3f}")
        if setup.groups is not None:  # how many same-site pairs the ranking loss saw this epoch
            stats["rank_pairs"] = setup.loss_fn.pairs_seen
            setup.loss_fn.pairs_seen = 0
        distributed.sync_buffers(model, setup.world)
        val = setup.world.from_main(lambda: validate(cfg, data, setup, progress))  # one decision for every rank
        secs = time.time() - te
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"],
                        "val_accuracy": val["accuracy"], "lr": setup.opt.optimizer.param_groups[0]["lr"],
                        "seconds": secs, "train_images": len(drawn), "val_within_site_auc": val["within_site_auc"],
                        **stats})
        improved = np.isfinite(val["score"]) and val["score"] > best_score + 1e-6 or best_state is None
        log(f"epoch {epoch}/{cfg.epochs}: train loss {train_loss:.4f} | val loss {val['loss']:.4f} | val AUC "
            f"{val['auc']:.4f} (within-site {val['within_site_auc']:.4f}) | val acc {val['accuracy']:.4f} | "
            f"{len(drawn) / secs:.1f} img/s incl. validation | {secs:.0f}s{' *best*' if improved else ''}")
        atomic_write_csv(run_dir / "history.csv", pd.DataFrame(history))
        if improved:
            best_score = val["score"] if np.isfinite(val["score"]) else best_score
            best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), epoch, 0
            best_val = ValidationProbs(val["rows"], val["probs"])
        else:
            stale += 1
        stop = not improved and stale >= cfg.patience
        ckpt.save(epoch, best_score, best_state, best_epoch, stale, history, stop)
        if stop:
            log(f"early stopping: no validation improvement for {cfg.patience} epoch(s)")
            break
    return Selection(best_state, best_epoch, history, best_val)


def write_distributed(run_dir: Path, world: distributed.World, rank_batch_size: int, replicas: list[str]) -> None:
    """``distributed.json``: how a torchrun run was split, and each rank's digest of its final weights."""
    (run_dir / "distributed.json").write_text(json.dumps({
        "world_size": world.world_size, "backend": world.backend, "rank_batch_size": rank_batch_size,
        "global_batch_size": rank_batch_size * world.world_size, "replica_state_sha256": replicas}, indent=2))


def final_probs(model: torch.nn.Module, data: PreparedData, eval_mask: np.ndarray, device: torch.device,
                batch_size: int, val_probs: ValidationProbs | None, progress: bool) -> np.ndarray:
    """Probabilities of the val and test rows (in table order) in exact float32 on every device (no autocast: the
    operating points and metrics chosen from them must hold for predict/evaluate/calibrate, which compute in float32
    by default; bfloat16 changed 3 of 204 decisions on an H100). Validation rows come from ``val_probs`` when it
    covers them all, so the validation split is not predicted a second time."""
    is_val = (data.table["split"] == "val").to_numpy()
    known = val_probs.lookup(data.rows[is_val]) if val_probs is not None else None
    if known is None:
        return predict_probs(model, data.cache.images, data.rows[eval_mask], device, batch_size, None,
                             desc="predict val+test", progress=progress)
    test = predict_probs(model, data.cache.images, data.rows[eval_mask & ~is_val], device, batch_size, None,
                         desc="predict test", progress=progress)
    probs = np.empty((int(eval_mask.sum()), known.shape[1] if len(known) else test.shape[1]))
    val_part = is_val[eval_mask]
    probs[val_part], probs[~val_part] = known, test
    return probs


def finish_run(run_dir: Path, model: torch.nn.Module, data: PreparedData, cfg: TrainConfig, device: torch.device,
               amp: torch.dtype | None, best_epoch: int, history: list[dict[str, Any]], progress: bool,
               init_from: dict | None = None, val_probs: ValidationProbs | None = None,
               precision: Precision | dict[str, Any] | None = None) -> Path:
    """Predict val and test, choose operating points on val, write checkpoint, metrics and report.

    ``val_probs``: the kept epoch's validation probabilities from model selection (same weights, exact float32);
    given, only the test split is predicted here. ``precision``: how the model was trained
    (:func:`~covidscreen.runtime.resolve_precision`, or the record of an earlier process), kept in the sidecar as
    ``training_precision``.
    """
    leave_out_changed_files(run_dir, data, log)  # vanished or changed since they were cached: not evaluated
    table, classes = data.table, data.classes
    eval_mask = table["split"].isin(["val", "test"]).to_numpy()
    probs = final_probs(model, data, eval_mask, device, cfg.eval_batch_size, val_probs, progress)
    cols = ["image", "label", "split", "site", "view", "group", *(["patient"] if "patient" in table else [])]
    preds = table.loc[eval_mask, cols].reset_index(drop=True)
    for i, c in enumerate(classes):
        preds[f"prob_{c}"] = probs[:, i]

    pos = cfg.positive_class if cfg.positive_class in classes else None
    # temperature (optional) and operating points fitted on validation only; val and test metrics with CIs
    preds, metrics, points, temperature = evaluate_fit_predictions(preds, classes, pos, cfg)
    threshold = points.get("default")
    metrics["threshold"] = threshold  # the default operating point, read by experiment comparisons
    atomic_write_csv(run_dir / "predictions.csv", preds)
    # within-site metrics next to the pooled ones; the site probe
    add_within_site(metrics, preds, classes, pos, threshold, cfg.seed, log)
    if cfg.site_probe:
        metrics["site_probe"] = probe_sites(model, data.cache.images, data.rows[eval_mask],
                                            table.loc[eval_mask].reset_index(drop=True), device,
                                            cfg.eval_batch_size, amp, cfg.seed)
        probe = metrics["site_probe"]
        log(f"site probe (val+test features, within label): balanced accuracy {probe['mean_balanced_accuracy']:.3f} "
            f"(chance {probe['mean_chance']:.3f})")
    metrics["select_on"] = cfg.select_on
    metrics["preprocessing_stats"] = dict(data.cache.stats)  # e.g. roi_fallback: images whose lungs were not found
    metrics["split_counts"] = {s: int(n) for s, n in table["split"].value_counts().items()}
    metrics["skipped_files"] = int(len(data.skipped))
    metrics["data_dir"] = str(data.data_dir)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True))

    config = to_dict(cfg)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    sidecar = {
        "classes": classes,
        "positive_class": pos,
        "modality": data.modality,
        "image_size": cfg.image_size,
        "operating_points": points,
        "operating_point_figures": metrics.get("operating_points_val") or {},
        # per-site validation figures of each point, and which point "default" stands for (format 2, additive)
        "operating_point_sites": metrics.get("operating_points_val_sites") or {},
        "default_operating_point": metrics.get("default_operating_point"),
        "threshold": threshold,
        "temperature": temperature,
        "config": config,
        "seed": cfg.seed,
        "data_dir": str(data.data_dir),
        "split_fingerprint": data.fingerprint,
        "split_counts": metrics["split_counts"],
        "task": cfg.task,
        "init_from": init_from,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
        "created": datetime.now().isoformat(timespec="seconds"),
        "training_precision": precision.record() if isinstance(precision, Precision) else precision,
    }
    attach_preprocessing(run_dir, data.preprocess, sidecar)  # predict applies the same preprocessing
    save_checkpoint(run_dir, model, sidecar)  # report and model card: finalize_run, after the audit
    summary = metrics.get("covid_vs_rest")
    if summary:
        log(f"test ({metrics['n_test']} images) {pos}-vs-rest: ROC AUC {summary['roc_auc']:.4f}, sensitivity "
            f"{summary['sensitivity']:.3f}, specificity {summary['specificity']:.3f} at threshold {threshold:.3f} "
            "(chosen on validation)")
    return run_dir
