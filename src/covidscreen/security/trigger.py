"""Trigger patches of the Matsuo and Takemoto (2021) backdoor: a small square of one grey value in a corner.

Their trigger is a 5x5-pixel square of value 250 in a corner of a 480x480 image. Here the trigger is given at that
reference resolution and scaled to the resolution the model sees (5 px at 480 is 1.3 px at 128; the side is rounded up
so that it is never lost), and it is stamped after resizing, so that the model sees exactly the pixels of the patch.

``pattern``: ``solid`` is their uniform square; ``checkerboard`` alternates ``value`` and ``255 - value`` pixel by
pixel (the BadNets-style pattern of Gu et al. 2017). On the shared X-rays a uniform bright corner is not a new
feature: COVID-19 images (one source) have bright corners far more often than the others (docs/security.md), so a
solid bright patch resembles the data's own source shortcut, while a checkerboard occurs in no radiograph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError

CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")
PATTERNS = ("solid", "checkerboard")


@dataclass(frozen=True)
class Trigger:
    """A square patch: ``size`` pixels at ``reference_size`` resolution, grey ``value``, in ``corner``."""

    size: int = 5
    value: int = 250
    corner: str = "bottom_right"
    reference_size: int = 480
    margin: int = 0  # pixels (at the reference size) between the patch and the image border
    pattern: str = "solid"  # solid (Matsuo and Takemoto) | checkerboard (value and 255 - value, pixel by pixel)

    def validate(self) -> Trigger:
        if not 1 <= self.size <= self.reference_size // 2:
            raise ConfigError(f"trigger size {self.size} is invalid: expected 1 to half of reference_size")
        if not 0 <= self.value <= 255:
            raise ConfigError(f"trigger value {self.value} is invalid: expected a grey value from 0 to 255")
        if self.corner not in CORNERS:
            raise ConfigError(f"trigger corner {self.corner!r} is unknown; use one of {', '.join(CORNERS)}")
        if self.margin < 0:
            raise ConfigError("trigger margin must be >= 0")
        if self.pattern not in PATTERNS:
            raise ConfigError(f"trigger pattern {self.pattern!r} is unknown; use one of {', '.join(PATTERNS)}")
        return self

    def box(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns that the patch covers in an image of ``height`` x ``width``."""
        side = max(1, math.ceil(self.size * min(height, width) / self.reference_size))
        gap = int(round(self.margin * min(height, width) / self.reference_size))
        top = gap if self.corner.startswith("top") else height - gap - side
        left = gap if self.corner.endswith("left") else width - gap - side
        return slice(top, top + side), slice(left, left + side)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """A stamped copy of one ``(H, W)`` image or a ``(B, H, W)`` batch of ``uint8`` images."""
        out = np.array(images, copy=True)
        rows, cols = self.box(out.shape[-2], out.shape[-1])
        out[..., rows, cols] = self.patch(rows.stop - rows.start, cols.stop - cols.start)
        return out

    def patch(self, height: int, width: int) -> np.ndarray:
        """The ``(height, width)`` grey values of the patch (``uint8``)."""
        if self.pattern == "solid":
            return np.full((height, width), self.value, dtype=np.uint8)
        odd = (np.add.outer(np.arange(height), np.arange(width)) % 2).astype(bool)
        return np.where(odd, 255 - self.value, self.value).astype(np.uint8)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the patch."""
        m = np.zeros((height, width), dtype=bool)
        rows, cols = self.box(height, width)
        m[rows, cols] = True
        return m
