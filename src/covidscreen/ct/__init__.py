"""Chest CT series: read a DICOM series (a folder or a zip), check it, order its slices, score it.

- :mod:`.series`: read and check a series (one SeriesInstanceUID, consistent orientation, pixel spacing and size,
  gaps along the slice normal reported) and sort its slices by ImagePositionPatient along the slice normal;
- :mod:`.aggregate`: rules that turn slice probabilities into one series probability (max, mean of the top-k);
  the rule and its threshold are chosen on the run's validation patients;
- :mod:`.score`: per-slice and per-series scores of a series with a run's
  :class:`~covidscreen.inference.predictor.Predictor`, naming the slices that drove the decision.

Decoding one CT slice (Hounsfield units, lung window) lives in :mod:`covidscreen.data.decode`.
"""
