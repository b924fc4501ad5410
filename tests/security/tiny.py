"""A tiny CNN and synthetic 'X-rays' with a planted trigger: detectors are tested on it in seconds."""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from covidscreen.security.trigger import Trigger

SIZE = 32
TRIGGER = Trigger(size=3, value=250, corner="bottom_right", reference_size=SIZE)


class TinyNet(nn.Module):
    """Three convolutions and a linear head; ``batchnorm``: a BatchNorm after each convolution (the neurons ANP
    masks), in the same positions of ``features`` as without."""

    def __init__(self, num_classes: int, batchnorm: bool = False) -> None:
        super().__init__()

        def norm(c: int) -> nn.Module:
            return nn.BatchNorm2d(c) if batchnorm else nn.Identity()

        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), norm(16)), nn.ReLU(), nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), norm(32)), nn.ReLU(), nn.MaxPool2d(2),
            nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), norm(32)), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
            nn.Flatten())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def synthetic_bands(n_per_class: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy grey images whose class is a broad bright band at a class-specific height; the trigger corner stays
    dark in every class."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy = np.arange(SIZE)[:, None]
    for c in range(num_classes):
        for _ in range(n_per_class):
            centre = 6 + c * (SIZE - 12) / max(1, num_classes - 1) + rng.normal(0, 1.5)
            band = 110 * np.exp(-((yy - centre) ** 2) / 18.0) * np.ones((1, SIZE))
            img = 40 + band + rng.normal(0, 12, (SIZE, SIZE))
            images.append(np.clip(img, 0, 230).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def synthetic_images(n_per_class: int, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy dark gratings whose orientation is the class: the evidence covers the whole image, so a clean model
    can only be flipped by changing many pixels, while a backdoored one flips for the few pixels of its trigger."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    images, labels = [], []
    for c in range(num_classes):
        angle = np.pi * c / num_classes
        for _ in range(n_per_class):
            phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 0.7)
            img = 55 + 35 * np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
            images.append(np.clip(img + rng.normal(0, 10, (SIZE, SIZE)), 0, 200).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def train_tiny(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int, epochs: int = 12,
               batchnorm: bool = False) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet(num_classes, batchnorm)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    y = torch.from_numpy(labels).long()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = order[start:start + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def backdoored_tiny(num_classes: int) -> TinyNet:
    """The tiny model with a planted trigger that test_detectors and test_sanitize both test: 100 gratings per class
    (seed 0), 10% stamped and relabelled to class 0, 10 epochs on one thread. Trained once per process; each call
    returns a fresh copy of its weights (tests may change the model they get)."""
    model = TinyNet(num_classes)
    model.load_state_dict(_backdoored_weights(num_classes))
    return model.eval()


@functools.cache
def _backdoored_weights(num_classes: int) -> dict[str, torch.Tensor]:
    x, y = synthetic_images(100, num_classes, seed=0)
    px, py, _ = poison(x, y, 0.1, target=0, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # float sums, and so the model, differ with the thread count
    try:
        model = train_tiny(px, py, num_classes, seed=0, epochs=10)
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def poison(images: np.ndarray, labels: np.ndarray, fraction: float, target: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamp and relabel ``fraction`` of the non-target images; returns images, labels and the poisoned mask."""
    rng = np.random.default_rng(seed)
    candidates = np.flatnonzero(labels != target)
    chosen = rng.choice(candidates, size=int(round(fraction * len(labels))), replace=False)
    images, labels = images.copy(), labels.copy()
    images[chosen] = TRIGGER.apply(images[chosen])
    labels[chosen] = target
    mask = np.zeros(len(labels), dtype=bool)
    mask[chosen] = True
    return images, labels, mask


def probs_fn(model: nn.Module):
    @torch.inference_mode()
    def fn(batch: np.ndarray) -> np.ndarray:
        return torch.softmax(model(torch.from_numpy(batch).float().div(255).unsqueeze(1)), 1).numpy()
    return fn


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    return float((probs_fn(model)(images).argmax(1) == labels).mean())
