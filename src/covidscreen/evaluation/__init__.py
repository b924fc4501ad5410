"""Evaluation: metrics (``metrics.py``), operating points (``thresholds.py``), plots and the HTML report
(``report.py``), and ``evaluate.py`` which runs a trained model on a split or another data folder."""
