"""Models: the registry (``registry.py``) and pretrained-weight loading and verification (``weights.py``).

``create_model(name, pretrained, num_classes)`` returns a :class:`ScreeningModel`: a backbone plus the input
normalisation of its pretrained weights, taking greyscale or RGB tensors in [0, 1]. Each registry entry carries its
metadata (input size, mean/std, weights source and sha256, the Grad-CAM layer, its stages for partial fine-tuning).
"""

from .registry import MODEL_SPECS, ModelSpec, ScreeningModel, create_model, get_spec, list_models

__all__ = ["MODEL_SPECS", "ModelSpec", "ScreeningModel", "create_model", "get_spec", "list_models"]
