"""Inference: checkpoints (``checkpoint.py``: safetensors weights + JSON sidecar), ensembles used like one model
(``ensemble.py``) and prediction on files (``predictor.py``), used by ``covidscreen predict``, evaluation on other
folders and (later) the service."""
