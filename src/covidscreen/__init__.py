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

import os

__version__ = "0.1.0"

# OpenMP threads that wait by sleeping instead of spinning. On a CPU shared with other busy processes (a laptop, a
# shared workstation, several ranks of torchrun on one machine) a spinning thread holds a core that the thread it
# waits for needs: a training step of the default model took 5-10x longer with the default (active) policy than with
# this one on this project's shared 2-core machine (docs/performance.md). Set here, before anything imports PyTorch
# and loads its OpenMP runtime; an OMP_WAIT_POLICY set by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
