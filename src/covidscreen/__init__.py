"""covidscreen: COVID-19 and pneumonia screening on chest X-rays and CT slices by transfer learning.

Folders, one concern each:

- ``data/``: reading tables and images (PNG, JPEG, DICOM), patient-grouped splits, the preprocessed cache.
- ``models/``: the model registry and pretrained-weight loading.
- ``training/``: losses, the training loop and ``fit`` which writes a run folder.
- ``evaluation/``: metrics, operating points and the HTML report.
- ``inference/``: checkpoints (safetensors + JSON sidecar) and prediction on files.
- ``explain/``: Grad-CAM heatmaps.
- ``audit/``: leakage and shortcut audits.
- ``cli.py``: the thin command-line layer.
"""

__version__ = "0.1.0"
