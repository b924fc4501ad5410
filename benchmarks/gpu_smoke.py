"""Smoke check of the training options on a CUDA device (AMP, soft targets, ensembles); prints what it did.

Run on a GPU machine: ``PYTHONPATH=src python benchmarks/gpu_smoke.py``. Uses random images, no data folder.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from covidscreen.inference.ensemble import EnsembleModel
from covidscreen.models import create_model
from covidscreen.runtime import amp_dtype, resolve_device
from covidscreen.training.finetune import HeadWarmup, discriminative_param_groups, set_trainable_stages
from covidscreen.training.loop import Optimisation, classification_step, predict_probs, train_one_epoch
from covidscreen.training.losses import FocalLoss
from covidscreen.training.mixup import BatchMixer


def main() -> None:
    device = resolve_device("auto")
    amp = amp_dtype(device)
    print(f"device {device}, AMP {amp}")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (256, 128, 128), dtype=np.uint8)
    labels = rng.integers(0, 3, 256)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = create_model("efficientnet_lite0", pretrained=False, num_classes=3)
        set_trainable_stages(model, None)
        model = model.to(device).to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(discriminative_param_groups(model, 1e-3, 0.7), weight_decay=0.01)
        warm = HeadWarmup(model, 1)
        loss_fn = FocalLoss(2.0, torch.tensor([1.0, 1.0, 2.0])).to(device)
        mixer = BatchMixer(3, 0.4, 1.0, seed=seed)
        scaler = torch.amp.GradScaler("cuda") if amp == torch.float16 else None
        for epoch in (1, 2):
            warm.set_epoch(epoch)
            t0 = time.time()
            state = Optimisation(model, opt, None, device, 32, torch.Generator().manual_seed(epoch), amp=amp,
                                 scaler=scaler, mixer=mixer)
            step = classification_step(model, loss_fn, device, amp)
            loss = train_one_epoch(state, images, np.arange(256), labels, step, progress=False)["loss"]
            print(f"seed {seed} epoch {epoch}: loss {loss:.4f} finite={np.isfinite(loss)} {time.time() - t0:.2f}s")
        models.append(model)
    ens = EnsembleModel(models).eval()
    p = predict_probs(ens, images, np.arange(64), device, 32, amp, progress=False)
    singles = [predict_probs(m, images, np.arange(64), device, 32, amp, progress=False) for m in models]
    print(f"ensemble probs sum to 1: {np.allclose(p.sum(1), 1, atol=1e-4)}; max |ensemble - mean of members| "
          f"{np.abs(p - np.mean(singles, 0)).max():.2e}")


if __name__ == "__main__":
    main()
