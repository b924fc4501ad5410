"""Seconds per training epoch: a plain torchvision ``ImageFolder`` pipeline vs covidscreen's training loop.

Both sides run in this one process, on the same training and validation images, the same network (the registry's
``--model`` with its ImageNet weights) and the same input size:

* **plain**: the pipeline of the seed code (Deep-COVID's training script, itself the PyTorch transfer-learning
  tutorial): ``torchvision.datasets.ImageFolder`` over a class-per-folder tree, every image decoded and resized by
  PIL in every epoch, ``DataLoader(num_workers=0)``, every parameter fine-tuned with SGD (lr 0.001, momentum 0.9),
  contiguous (NCHW) tensors.
* **covidscreen**: what ``covidscreen train`` does with its default ``TrainConfig``: the decode cache (each image
  decoded and resized once into a memory-mapped uint8 array), channels_last, augmentation on whole batches, the last
  ``train_stages`` stages fine-tuned (frozen early stages need no backward pass, and their BatchNorm is folded into
  their convolutions: ``training/folding.py``) with AdamW and the warm-up/cosine schedule, the class-weighted loss,
  and the same ``train_one_epoch`` that ``covidscreen train`` runs. With ``--torch-compile`` its model is compiled
  by TorchInductor (``torch.compile``; the first epoch pays the compilation).

The machine this was written on is shared by several sessions, so the two sides' epochs are *interleaved* (plain,
covidscreen, covidscreen, plain, ...): both see the same load, and the ratio of their medians is what to compare;
absolute seconds move with the load. The first epoch of each side is reported apart (it pays the cache build).

Also printed: each side's validation AUC (COVID vs rest), a profile of covidscreen's epoch (data, forward, backward,
optimizer), and with ``--variants`` covidscreen's epoch with alternatives (frozen BatchNorm not folded, contiguous
tensors, batch 16/64, bfloat16 autocast where the CPU has AVX-512 BF16 or AMX, one thread), each interleaved with
the default.

With ``--precision``, instead: covidscreen's epoch in float32 against the same epoch under bfloat16 autocast
(``precision: bf16``; what ``auto`` picks on a CPU with AMX or AVX-512 BF16), interleaved, with wall and CPU seconds
per epoch and the validation AUC of each; each one's epoch split into its shares (data: cache read, ``to_input``
and augmentation; forward; backward; optimizer step; validation, as ``covidscreen train`` validates after each
epoch); and the machine's float32 and bfloat16 matrix-product roofs (best GFLOP/s of a square product).

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_epoch.py --n-train 192 --n-val 96 --epochs 5 --variants
    PYTHONPATH=src .venv/bin/python benchmarks/bench_epoch.py --precision --n-train 96 --n-val 64 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from bench_inference import matmul_peak  # the roof as bench_inference.py measures it (same folder)
from torch import nn

from covidscreen.config import TrainConfig
from covidscreen.data.augment import AugmentConfig, augment_batch
from covidscreen.data.cache import ImageCache
from covidscreen.data.locate import resolve_data_dir
from covidscreen.data.table import load_table
from covidscreen.evaluation.metrics import headline_auc
from covidscreen.models import create_model
from covidscreen.runtime import autocast, cpu_bf16, cpu_flags, seed_everything, to_input
from covidscreen.training.finetune import discriminative_param_groups, freeze_batchnorm, set_trainable_stages
from covidscreen.training.folding import folded_frozen_batchnorm
from covidscreen.training.loop import (
    Optimisation,
    classification_step,
    cosine_with_warmup,
    predict_probs,
    train_one_epoch,
)
from covidscreen.training.losses import criterion
from covidscreen.training.precision import float32_slow_depthwise


def pick_images(n_train: int, n_val: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """A class-stratified sample of the shared chest X-rays, split into train and val (both sides use this split;
    only their speed and relative accuracy are compared, so patient grouping does not matter here)."""
    table = load_table(resolve_data_dir(None))
    classes = sorted(table["label"].unique())
    per_class = (n_train + n_val) // len(classes)
    sample = pd.concat([g.sample(n=min(per_class, len(g)), random_state=seed) for _, g in table.groupby("label")])
    sample = sample.sample(frac=1.0, random_state=seed).reset_index(drop=True)
    sample["y"] = sample["label"].map({c: i for i, c in enumerate(classes)})
    is_val = np.zeros(len(sample), bool)
    for _, idx in sample.groupby("label").groups.items():  # the same share of each class in val
        is_val[np.asarray(idx)[: round(len(idx) * n_val / (n_train + n_val))]] = True
    return sample[~is_val].reset_index(drop=True), sample[is_val].reset_index(drop=True), classes


def image_folder(root: Path, table: pd.DataFrame) -> Path:
    """A class-per-folder tree of symlinks, as ImageFolder reads it."""
    for i, row in table.iterrows():
        d = root / row["label"]
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{i:05d}{Path(row['path']).suffix}").symlink_to(row["path"])
    return root


class PlainTrainer:
    """The seed code's pipeline (see the module docstring)."""

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, classes: list[str], args: argparse.Namespace,
                 tmp: Path) -> None:
        from torchvision import datasets, transforms

        size = args.image_size
        # one channel because the network takes one (its ImageNet normalisation sits inside the model)
        train_tf = transforms.Compose([transforms.Grayscale(1), transforms.Resize((size, size)),
                                       transforms.RandomHorizontalFlip(), transforms.ToTensor()])
        val_tf = transforms.Compose([transforms.Grayscale(1), transforms.Resize((size, size)), transforms.ToTensor()])
        train_ds = datasets.ImageFolder(str(image_folder(tmp / "plain_train", train)), transform=train_tf)
        val_ds = datasets.ImageFolder(str(image_folder(tmp / "plain_val", val)), transform=val_tf)
        assert train_ds.classes == classes, (train_ds.classes, classes)
        seed_everything(args.seed)
        self.loader = torch.utils.data.DataLoader(train_ds, batch_size=args.batch_size, shuffle=True, num_workers=0,
                                                  drop_last=True)
        self.val_loader = torch.utils.data.DataLoader(val_ds, batch_size=64, shuffle=False, num_workers=0)
        self.model = create_model(args.model, pretrained=True, num_classes=len(classes))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.001, momentum=0.9)
        self.loss_fn = nn.CrossEntropyLoss()
        self.classes = classes

    def epoch(self) -> None:
        self.model.train()
        for x, y in self.loader:
            self.optimizer.zero_grad()
            self.loss_fn(self.model(x), y).backward()
            self.optimizer.step()

    def auc(self) -> float:
        self.model.eval()
        probs, ys = [], []
        with torch.inference_mode():
            for x, y in self.val_loader:
                probs.append(torch.softmax(self.model(x), 1).numpy())
                ys.append(y.numpy())
        return headline_auc(np.concatenate(ys), np.concatenate(probs), self.classes, "covid")


class CovidscreenTrainer:
    """covidscreen's default training, on a decode cache built at the first epoch."""

    def __init__(self, train: pd.DataFrame, val: pd.DataFrame, classes: list[str], args: argparse.Namespace,
                 cache_dir: Path, batch_size: int, channels_last: bool = True, amp: torch.dtype | None = None,
                 torch_compile: bool = False, fold: bool = True) -> None:
        self.train, self.val, self.classes, self.args = train, val, classes, args
        self.amp = amp  # bfloat16 autocast on the CPU: a variant, not covidscreen's default (float32 on a CPU)
        self.cache_dir, self.channels_last = cache_dir, channels_last
        self.cache: ImageCache | None = None
        cfg = TrainConfig(model=args.model, image_size=args.image_size, batch_size=batch_size, epochs=args.epochs)
        generator = seed_everything(args.seed)
        model = create_model(cfg.model, pretrained=True, num_classes=len(classes))
        set_trainable_stages(model, cfg.train_stages)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.loss_fn = criterion(cfg, classes, train["y"].to_numpy())
        steps = len(train) // batch_size * cfg.epochs
        optimizer = torch.optim.AdamW(discriminative_param_groups(model, cfg.lr, cfg.lr_decay), lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                      cosine_with_warmup(steps, int(cfg.warmup_fraction * steps)))
        self.opt = Optimisation(model, optimizer, scheduler, torch.device("cpu"), batch_size, generator,
                                augment=AugmentConfig() if cfg.augment else None, amp=amp,
                                fold_frozen_batchnorm=fold)
        self.rng = np.random.default_rng(args.seed)
        # what the training step calls: the model, or with --torch-compile the model compiled by TorchInductor
        self.forward = torch.compile(model, dynamic=False) if torch_compile else model
        self.profile = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0)
        self.validation = 0.0  # seconds of validation after profiled epochs (``validate_timed``)

    def images(self) -> np.ndarray:
        if self.cache is None:  # the first epoch pays the decode, as a first run does (later runs reuse the cache)
            self.cache = ImageCache(self.train["path"].tolist() + self.val["path"].tolist(), self.args.image_size,
                                    cache_dir=str(self.cache_dir), progress=False)
        return self.cache.images

    def epoch(self) -> None:
        """One epoch of ``train_one_epoch``, as ``covidscreen train`` runs it."""
        images = self.images()
        order = self.rng.permutation(len(self.train))
        step = classification_step(self.forward, self.loss_fn, self.opt.device, self.amp)
        train_one_epoch(self.opt, images, order, self.train["y"].to_numpy()[order], step, progress=False)

    def profiled_epoch(self) -> None:
        """The steps of ``train_one_epoch`` timed one by one (data: cache read, to_input, augmentation); with
        ``channels_last=False`` the batches stay NCHW-contiguous."""
        images, opt, y = self.images(), self.opt, self.train["y"].to_numpy()
        model = opt.model
        model.train()
        freeze_batchnorm(model)
        order = self.rng.permutation(len(self.train))
        example = to_input(torch.from_numpy(np.ascontiguousarray(images[order[:2]])), opt.device) if (
            opt.fold_frozen_batchnorm) else None
        with folded_frozen_batchnorm(model, example), float32_slow_depthwise(model, opt.device, opt.amp):
            self._profiled_batches(images, order, y)  # as train_one_epoch does

    def _profiled_batches(self, images: np.ndarray, order: np.ndarray, y: np.ndarray) -> None:
        opt, bs = self.opt, self.opt.batch_size
        for b in range(len(order) // bs):
            t0 = time.perf_counter()
            idx = order[b * bs:(b + 1) * bs]
            x = to_input(torch.from_numpy(np.ascontiguousarray(images[idx])), opt.device)
            x = augment_batch(x, opt.augment, opt.generator)
            if not self.channels_last:
                x = x.contiguous()
            target = torch.from_numpy(y[idx])
            t1 = time.perf_counter()
            with autocast(opt.device, self.amp):
                loss = self.loss_fn(self.forward(x), target)
            t2 = time.perf_counter()
            opt.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t3 = time.perf_counter()
            opt.optimizer.step()
            opt.scheduler.step()
            t4 = time.perf_counter()
            for k, dt in zip(self.profile, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                self.profile[k] += dt

    def auc(self, amp: torch.dtype | None = None) -> float:
        """Validation AUC, in exact float32 unless ``amp`` (how ``covidscreen train`` validates each epoch)."""
        rows = np.arange(len(self.train), len(self.train) + len(self.val))
        probs = predict_probs(self.opt.model, self.images(), rows, self.opt.device, 64, amp=amp, progress=False)
        return headline_auc(self.val["y"].to_numpy(), probs, self.classes, "covid")

    def validate_timed(self) -> None:
        """The per-epoch validation of ``covidscreen train`` (under the run's autocast), timed."""
        t = time.perf_counter()
        self.auc(self.amp)
        self.validation += time.perf_counter() - t

    def shares(self) -> str:
        parts = {**self.profile, "validation": self.validation}
        total = sum(parts.values())
        return ", ".join(f"{k} {v:.1f}s ({v / total:.0%})" for k, v in parts.items())


def matmul_roof(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` matrix product in ``dtype`` (bench_inference.py's measurement)."""
    return matmul_peak(n, repeats, dtype) / 1e9


def compare_precision(train: pd.DataFrame, val: pd.DataFrame, classes: list[str], args: argparse.Namespace,
                      tmp: Path) -> None:
    """float32 vs bfloat16 autocast epochs of covidscreen's loop, interleaved; shares of each; the roofs."""
    support = cpu_bf16()
    roofs = {dt: matmul_roof(dt) for dt in (torch.float32, torch.bfloat16)}
    print(f"CPU: {support.describe()} | matmul roof (2048^2, best of 5): float32 {roofs[torch.float32]:.0f} "
          f"GFLOP/s, bfloat16 {roofs[torch.bfloat16]:.0f} GFLOP/s ({roofs[torch.bfloat16] / roofs[torch.float32]:.1f}x)"
          f" | load {os.getloadavg()[0]:.1f}", flush=True)
    sides = {name: CovidscreenTrainer(train, val, classes, args, tmp / "cache", args.batch_size, amp=amp)
             for name, amp in (("float32", None), ("bfloat16", torch.bfloat16))}
    sides["float32"].images()  # build the cache outside the timings
    wall: dict[str, list[float]] = {k: [] for k in sides}
    cpu: dict[str, list[float]] = {k: [] for k in sides}
    for e in range(args.epochs):
        for name in (sides if e % 2 == 0 else reversed(list(sides))):
            w, c = time.perf_counter(), time.process_time()
            sides[name].epoch()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
        print(f"  epoch {e + 1}: float32 {wall['float32'][-1]:.1f}s ({cpu['float32'][-1]:.1f} CPU s) | bfloat16 "
              f"{wall['bfloat16'][-1]:.1f}s ({cpu['bfloat16'][-1]:.1f} CPU s) | load {os.getloadavg()[0]:.1f}",
              flush=True)
    med = {k: (float(np.median(wall[k][1:])), float(np.median(cpu[k][1:]))) for k in sides}
    aucs = {k: side.auc() for k, side in sides.items()}  # exact float32, as a run's final evaluation
    print("\n| precision | median s/epoch after the first | CPU s/epoch | img/s | val AUC (float32 eval) |\n"
          "|---|---|---|---|---|")
    for k in sides:
        print(f"| {k} | {med[k][0]:.1f} | {med[k][1]:.1f} | {len(train) / med[k][0]:.1f} | {aucs[k]:.3f} |")
    paired = np.array(wall["float32"][1:]) / np.array(wall["bfloat16"][1:])
    print(f"bfloat16 speed-up per epoch: {med['float32'][0] / med['bfloat16'][0]:.2f}x wall (paired epochs "
          f"{', '.join(f'{r:.2f}x' for r in paired)}), {med['float32'][1] / med['bfloat16'][1]:.2f}x CPU time",
          flush=True)
    for e in range(2):  # profiled epochs, interleaved too, each followed by its validation
        for name in (sides if e % 2 == 0 else reversed(list(sides))):
            sides[name].profiled_epoch()
            sides[name].validate_timed()
    for name, side in sides.items():
        print(f"shares of a {name} epoch (2 profiled epochs + validations): {side.shares()}")
    imgs = 2 * len(train)
    for name, side in sides.items():
        fwd_bwd = side.profile["forward"] + side.profile["backward"]
        print(f"{name}: forward+backward {imgs / fwd_bwd:.1f} img/s")


def timed(fn, threads: int | None = None) -> float:
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t = time.perf_counter()
    fn()
    secs = time.perf_counter() - t
    torch.set_num_threads(before)
    return secs


def interleave(a, b, epochs: int, threads_b: int | None = None) -> tuple[list[float], list[float]]:
    """Seconds of ``epochs`` epochs of ``a`` and of ``b`` in the order a b b a a b b a ... (drift cancels)."""
    ta, tb = [], []
    for e in range(epochs):
        if e % 2 == 0:
            ta.append(timed(a))
            tb.append(timed(b, threads_b))
        else:
            tb.append(timed(b, threads_b))
            ta.append(timed(a))
        print(f"  epoch {e + 1}: {ta[-1]:.1f}s vs {tb[-1]:.1f}s | load {os.getloadavg()[0]:.1f}", flush=True)
    return ta, tb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=TrainConfig.model)
    ap.add_argument("--image-size", type=int, default=TrainConfig.image_size)
    ap.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    ap.add_argument("--n-train", type=int, default=192)
    ap.add_argument("--n-val", type=int, default=96)
    ap.add_argument("--epochs", type=int, default=5, help="epochs per side (the first is reported apart)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", action="store_true", help="also time covidscreen with alternative settings")
    ap.add_argument("--precision", action="store_true",
                    help="only covidscreen's epoch in float32 vs bfloat16 autocast, with shares and matmul roofs")
    ap.add_argument("--torch-compile", action="store_true",
                    help="covidscreen's side with torch_compile (its first epoch pays the compilation)")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (seconds per epoch are measured after the first)")
    train, val, classes = pick_images(args.n_train, args.n_val, args.seed)
    print(f"torch {torch.__version__} | {os.cpu_count()} CPUs, {torch.get_num_threads()} threads | load "
          f"{os.getloadavg()[0]:.1f} | model {args.model} | {args.image_size}px | batch {args.batch_size} | "
          f"{len(train)} train / {len(val)} val images | {args.epochs} epochs"
          f"{' | covidscreen with torch_compile' if args.torch_compile else ''}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.precision:
            compare_precision(train, val, classes, args, tmp)
            return
        plain = PlainTrainer(train, val, classes, args, tmp)
        cs = CovidscreenTrainer(train, val, classes, args, tmp / "cache", args.batch_size,
                                torch_compile=args.torch_compile)
        print("plain vs covidscreen, interleaved:", flush=True)
        plain_t, cs_t = interleave(plain.epoch, cs.epoch, args.epochs)
        plain_s, cs_s = float(np.median(plain_t[1:])), float(np.median(cs_t[1:]))
        plain_auc, cs_auc = plain.auc(), cs.auc()
        paired = np.array(plain_t[1:]) / np.array(cs_t[1:])
        print(f"\n| pipeline | first epoch (s) | median s/epoch after the first | img/s | val AUC covid-vs-rest |\n"
              f"|---|---|---|---|---|\n"
              f"| plain ImageFolder, num_workers=0 | {plain_t[0]:.1f} | {plain_s:.1f} | {len(train) / plain_s:.1f} | "
              f"{plain_auc:.3f} |\n"
              f"| covidscreen | {cs_t[0]:.1f} | {cs_s:.1f} | {len(train) / cs_s:.1f} | {cs_auc:.3f} |\n"
              f"speed-up per epoch after the first: {plain_s / cs_s:.2f}x (ratio of medians); paired epochs "
              f"{', '.join(f'{r:.2f}x' for r in paired)}", flush=True)

        cs.profiled_epoch()
        total = sum(cs.profile.values())
        print("profile of one covidscreen epoch: " + ", ".join(f"{k} {v:.1f}s ({v / total:.0%})"
                                                               for k, v in cs.profile.items()), flush=True)
        if args.variants:
            rows = []
            n = max(2, args.epochs - 1)
            nchw = CovidscreenTrainer(train, val, classes, args, tmp / "cache", args.batch_size, channels_last=False)
            a, b = interleave(cs.profiled_epoch, nchw.profiled_epoch, n)
            rows.append(("contiguous NCHW instead of channels_last", np.median(a) / np.median(b)))
            unfolded = CovidscreenTrainer(train, val, classes, args, tmp / "cache", args.batch_size, fold=False)
            a, b = interleave(cs.epoch, unfolded.epoch, n)
            rows.append(("frozen BatchNorm not folded into the convolutions", np.median(a) / np.median(b)))
            for bs in (16, 64):
                if bs <= len(train):
                    other = CovidscreenTrainer(train, val, classes, args, tmp / "cache", bs)
                    a, b = interleave(cs.epoch, other.epoch, n)
                    rows.append((f"batch {bs} instead of {args.batch_size}", np.median(a) / np.median(b)))
            if "avx512_bf16" in cpu_flags() or "amx_bf16" in cpu_flags():
                bf16 = CovidscreenTrainer(train, val, classes, args, tmp / "cache", args.batch_size,
                                          amp=torch.bfloat16)
                a, b = interleave(cs.epoch, bf16.epoch, n)
                rows.append((f"bfloat16 autocast, AVX-512 BF16 (val AUC {bf16.auc():.3f} after its {n} epochs)",
                             np.median(a) / np.median(b)))
            if torch.get_num_threads() > 1:
                a, b = interleave(cs.epoch, cs.epoch, n, threads_b=1)
                rows.append((f"1 intra-op thread instead of {torch.get_num_threads()}", np.median(a) / np.median(b)))
            print("\n| covidscreen variant (interleaved with the default) | speed vs the default |\n|---|---|")
            for name, ratio in rows:
                print(f"| {name} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
