"""Audits that make the known failure modes of chest X-ray AI visible (``covidscreen audit DATA_DIR [RUN_DIR]``).

- ``leakage.py``: patients in more than one split, byte-identical files, near-duplicate images across and within
  splits (perceptual hash + thumbnail correlation), with the offending pairs listed.
- ``shortcut.py``: can a simple model predict the site (or image size, or pediatric vs adult source) from the images
  or from the trained model's features?
- ``confounding.py``: label-by-site table, Cramér's V and plain-words warnings.
- ``hashing.py`` / ``imagestats.py``: file hashes, perceptual hashes and per-image summaries from the image cache.
- ``run.py``: runs everything and writes ``audit.json`` / ``audit_pairs.csv``; ``render.py``: its HTML.
"""

from .run import audit_data_dir, audit_table

__all__ = ["audit_data_dir", "audit_table"]
