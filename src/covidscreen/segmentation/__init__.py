"""Lung segmentation: a small U-Net-like network on an ImageNet-pretrained registry encoder.

- ``model.py``: :class:`LungSegNet` (registry encoder + light decoder) and the encoder layouts it knows.
- ``checkpoint.py``: ``lung_seg.safetensors`` + ``lung_seg.json`` (encoder, input size, Dice, sha256).
- ``predict.py``: ``predict_lung_mask(model, image)``: a boolean mask in the image's own geometry, and
  :class:`LungSegmenter` for batches, and :func:`load_segmenter_for`, the segmenter a run's preprocessing names
  (handed to ``data/preprocess.py``, which takes any callable from images to masks and imports no network).

Training the segmenter is a job: ``workflows/segment.py`` (``covidscreen segment train``).
"""

from .model import ENCODER_LAYOUTS, LungSegNet
from .predict import LungSegmenter, load_segmenter_for, predict_lung_mask

__all__ = ["ENCODER_LAYOUTS", "LungSegNet", "LungSegmenter", "load_segmenter_for", "predict_lung_mask"]
