"""Training: losses (``losses.py``), device/AMP/seed helpers (``runtime.py``), the plain loop functions
``train_one_epoch`` and ``predict_probs`` (``loop.py``), and ``fit`` (``trainer.py``) which builds data and model
from a :class:`~covidscreen.config.TrainConfig` and writes a complete run folder.

Transfer-learning options, one module each: fine-tuning depth, discriminative learning rates and head warm-up
(``finetune.py``), class-balanced sampling (``sampling.py``), mixup/CutMix (``mixup.py``), task, split, training
share and site/label filters (``subsets.py``), sequential fine-tuning (``init_from.py``), k-fold cross-validation
(``crossval.py``). Experiments: the grid runner (``experiment.py``), its comparison table (``comparison.py``, with
within-site columns and the per-variant summary over seeds), resuming (``resume.py``) and run metrics from
predictions (``run_metrics.py``); confidence intervals come from ``evaluation/bootstrap.py``. Options and their
tests: ``docs/transfer_learning.md``. Data-parallel training under ``torchrun`` (DDP, the sampler that shards each
epoch across ranks): ``distributed.py``, documented in ``docs/performance.md``."""
