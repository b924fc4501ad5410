"""Training primitives: what one epoch of fine-tuning is made of. Nothing here reads a data folder or writes a run
(that is ``workflows/train.py``, which composes these from a :class:`~covidscreen.config.TrainConfig`).

- the epoch loop with a pluggable per-batch step, and batched prediction (``loop.py``); frozen stages' BatchNorm
  folded into their convolutions for the length of an epoch (``folding.py``);
- losses (``losses.py``), optimizers (``optimizers.py``), fine-tuning depth, discriminative learning rates and head
  warm-up (``finetune.py``), class-balanced sampling (``sampling.py``), mixup/CutMix (``mixup.py``), task, training
  share and site/label filters (``subsets.py``);
- the site adversary (``adversarial.py``), the within-site ranking loss (``site_contrast.py``), scikit-learn heads
  on frozen features (``frozen_head.py``);
- epoch checkpoints that survive Ctrl-C and crashes (``checkpointing.py``) and data-parallel training under
  ``torchrun`` (DDP, the sampler that shards each epoch across ranks: ``distributed.py``, ``docs/performance.md``).

Options and their tests: ``docs/transfer_learning.md``.
"""
