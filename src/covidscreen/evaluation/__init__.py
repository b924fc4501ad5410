"""Evaluation: numbers a user can trust, and the report that shows them.

- ``metrics.py``: point metrics (per class and positive-vs-rest); ``bootstrap.py``: patient-level bootstrap CIs;
  ``delong.py``: DeLong AUC variance; ``assess.py``: all of it (plus operating points and calibration) for one set
  of predictions, and the validation-only fitting that training uses.
- ``thresholds.py``: operating points chosen on validation; ``calibration.py``: ECE, Brier, temperature scaling.
- ``breakdown.py``: per-site / per-view tables; ``external.py`` and ``holdout.py``: external and leave-one-site-out
  validation; ``evaluate.py``: ``covidscreen evaluate``.
- ``report.py`` (+ ``plots.py``, ``html.py``): ``report.html``; ``model_card.py``: ``model_card.md``;
  ``finalize.py``: what training runs after its checkpoint (audit, held-out site, report, model card).
"""
