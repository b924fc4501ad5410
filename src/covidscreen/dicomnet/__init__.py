"""DICOM networking: covidscreen as a node on a hospital's DICOM network, next to its PACS.

- ``address.py``: ``HOST:PORT:AET`` destinations.
- ``scoring.py``: :class:`DicomScorer`, a run's :class:`~covidscreen.inference.predictor.Predictor` (the one
  inference engine) and its Grad-CAM figure (as ``covidscreen explain`` draws it) on datasets held in memory.
- ``sr.py``: the result's content as a TID 1500 Measurement Report (highdicom): SNOMED CT findings, the probability
  (DCM 122157, UCUM), the decision at the operating point, TID 4019 algorithm identification, the device observer,
  the research-tool statement; private codes only where no standard one exists.
- ``objects.py``: the results as standard DICOM objects filed into the input's study: the SR of ``sr.py``, a
  Secondary Capture of the heatmap figure with a burnt-in caption, and the heatmap as a Parametric Map a viewer can
  overlay; only the patient and study modules are copied from the input; every new UID is derived from the input's
  SOP Instance UID, the model and the operating point, so a result sent twice is one result.
- ``faults.py``: crash points (``COVIDSCREEN_FAULT``) for the tests of "exactly one result per image".
- ``scu.py``: C-STORE of datasets to a remote node (pynetdicom SCU), with the DIMSE statuses checked.
- ``outbox.py``: the durable outbox: results wait on disk until the PACS has them (retried with backoff; listed and
  resent by command).
- ``dicomweb.py``: a DICOMweb server (dicomweb-client): QIDO-RS, WADO-RS, STOW-RS, each failure a clear error.
- ``watch.py``: ``covidscreen dicomweb-watch``: new radiographs by QIDO-RS, scored, results stored by STOW-RS.
- ``node.py``: :class:`DicomNode`, the C-STORE / C-ECHO SCP (``covidscreen dicom-node``) with a bounded queue.
- ``send.py``: ``covidscreen dicom-send``: score local DICOM files and store the results in a PACS.

Their commands (``dicom-node``, ``dicom-send``, ``dicomweb-watch``, ``dicom-outbox list|resend``) are in
``cli/dicomnet.py``.
"""

from .address import AeAddress
from .node import DicomNode, NodeConfig
from .outbox import Outbox
from .scoring import DicomScorer, Score
from .sr import RESEARCH_STATEMENT

__all__ = ["RESEARCH_STATEMENT", "AeAddress", "DicomNode", "DicomScorer", "NodeConfig", "Outbox", "Score"]
