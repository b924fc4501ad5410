"""Lung segmentation: a small U-Net-like network on an ImageNet-pretrained registry encoder.

- ``model.py``: :class:`LungSegNet` (registry encoder + light decoder) and the encoder layouts it knows.
- ``train.py``: ``train_segmenter``: patient-grouped split of the images that have lung masks, training, Dice on
  held-out patients (``covidscreen segment train``).
- ``checkpoint.py``: ``lung_seg.safetensors`` + ``lung_seg.json`` (encoder, input size, Dice, sha256).
- ``predict.py``: ``predict_lung_mask(model, image)``: a boolean mask in the image's own geometry, and
  :class:`LungSegmenter` for batches (used by the classification preprocessing, ``data/preprocess.py``).
"""

from .model import ENCODER_LAYOUTS, LungSegNet
from .predict import LungSegmenter, predict_lung_mask

__all__ = ["ENCODER_LAYOUTS", "LungSegNet", "LungSegmenter", "predict_lung_mask"]
