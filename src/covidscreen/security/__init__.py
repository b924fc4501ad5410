"""Security: trusted models, hostile inputs, and the backdoor threat.

- ``integrity``: pinned sha256 checks of run folders (``--expect-sha256``, manifests of allowed models), provenance
  (``covidscreen verify``);
- ``trigger``: Matsuo-style trigger patches, stamped at the training resolution;
- ``poison``: a poisoned copy of a training set (a data transformation that the normal trainer then trains on);
- ``backdoor``: the demonstration workflow (clean vs poisoned models, attack success, survival of fine-tuning);
- ``strip``: STRIP, screening single inputs at prediction time;
- ``cleanse``: Neural-Cleanse-style trigger reverse-engineering, screening a model;
- ``patches``: patch search (every position of a grid), screening a model;
- ``mmbd``: the maximum-margin statistic (MM-BD) judged against clean reference models, screening a model;
- ``spectral``: spectral signatures, SPECTRE and activation clustering, screening a training set;
- ``transplant``: the trigger transplant (SentiNet's test at the patch search's positions), screening a training set;
- ``scan``: the scans of a run folder, their cache and record (``security_scan.json``), the start-up refusal of a
  flagged model;
- ``sanitize``: removing a backdoor with a small clean set (fine-pruning, NAD, I-BAU, ANP, unlearning of found
  patch triggers) into a new run folder;
- ``defence_report``: a sanitized model judged against issue 26's goal, with paired intervals on the test images.

Decoding limits against hostile images live where images are decoded (:mod:`covidscreen.data.decode`).
"""
