"""Security: trusted models, hostile inputs, and the backdoor threat.

- ``integrity``: pinned sha256 checks of run folders (``--expect-sha256``, manifests of allowed models), provenance
  (``covidscreen verify``);
- ``trigger``: Matsuo-style trigger patches, stamped at the training resolution;
- ``poison``: a poisoned copy of a training set (a data transformation that the normal trainer then trains on);
- ``backdoor``: the demonstration workflow (clean vs poisoned models, attack success, survival of fine-tuning);
- ``strip``: STRIP, screening single inputs at prediction time;
- ``cleanse``: Neural-Cleanse-style trigger reverse-engineering, screening a model;
- ``spectral``: spectral signatures and activation clustering, screening a training set;
- ``scan``: the scans of a run folder and their record (``security_scan.json``).

Decoding limits against hostile images live where images are decoded (:mod:`covidscreen.data.decode`).
"""
