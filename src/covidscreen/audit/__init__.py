"""Audits that make the known failure modes of chest X-ray AI visible (``covidscreen audit DATA_DIR [RUN_DIR]``).

- ``leakage.py``: patients in more than one split, byte-identical files, near-duplicate images across and within
  splits (perceptual hash + thumbnail correlation), with the offending pairs listed.
- ``shortcut.py``: can a simple model predict the site (or image size, or pediatric vs adult source) from the images
  or from the trained model's features?
- ``confounding.py``: label-by-site table, Cramér's V and plain-words warnings.
- ``image_format.py``: can the label be told from how the images were made (size, borders, saturated white, marks
  near the edges) rather than what they show? (the source confounding of the shared CT data)
- ``hashing.py`` / ``imagestats.py``: file hashes, perceptual hashes and per-image summaries from the image cache.
The audit of a data folder or a run (``workflows/audit.py``) runs them and writes ``audit.json``; its HTML is
``reporting/audit_page.py``.

Each analysis module registers itself in ``registry.py`` (its analysis, findings and page section) when it is
imported; importing this package imports and so registers them all. A new audit: one module, one import below.
"""

from . import confounding, image_format, leakage, shortcut
from .registry import AuditContext, all_findings, registered

__all__ = ["AuditContext", "all_findings", "confounding", "image_format", "leakage", "registered", "shortcut"]
