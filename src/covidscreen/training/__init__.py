"""Training: losses (``losses.py``), device/AMP/seed helpers (``runtime.py``), the plain loop functions
``train_one_epoch`` and ``predict_probs`` (``loop.py``), and ``fit`` (``trainer.py``) which builds data and model
from a :class:`~covidscreen.config.TrainConfig` and writes a complete run folder."""
