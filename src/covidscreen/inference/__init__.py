"""Inference: checkpoints (``checkpoint.py``: safetensors weights + JSON sidecar) and prediction on files
(``predictor.py``), used by ``covidscreen predict``, evaluation on other folders and (later) the service."""
