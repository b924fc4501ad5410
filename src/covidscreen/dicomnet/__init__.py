"""DICOM networking: covidscreen as a node on a hospital's DICOM network, next to its PACS.

- ``address.py``: ``HOST:PORT:AET`` destinations.
- ``scoring.py``: :class:`DicomScorer`, a run's :class:`~covidscreen.inference.predictor.Predictor` (the one
  inference engine) and its Grad-CAM figure (as ``covidscreen explain`` draws it) on datasets held in memory.
- ``objects.py``: the results as standard DICOM objects filed into the input's study: a Comprehensive SR (probability,
  decision, operating point with its validation sensitivity/specificity, model id, weights sha256, research-tool
  statement) and a Secondary Capture of the heatmap figure with a burnt-in caption; only the patient and study
  modules are copied from the input, every other attribute and every new UID is the node's own.
- ``scu.py``: C-STORE of datasets to a remote node (pynetdicom SCU), with the DIMSE statuses checked.
- ``outbox.py``: the durable outbox: results wait on disk until the PACS has them (retried with backoff; listed and
  resent by command).
- ``node.py``: :class:`DicomNode`, the C-STORE / C-ECHO SCP (``covidscreen dicom-node``) with a bounded queue.
- ``send.py``: ``covidscreen dicom-send``: score local DICOM files and store the results in a PACS.

Their commands (``dicom-node``, ``dicom-send``, ``dicom-outbox list|resend``) are in ``cli/dicomnet.py``.
"""

from .address import AeAddress
from .node import DicomNode, NodeConfig
from .objects import RESEARCH_STATEMENT
from .outbox import Outbox
from .scoring import DicomScorer, Score

__all__ = ["RESEARCH_STATEMENT", "AeAddress", "DicomNode", "DicomScorer", "NodeConfig", "Outbox", "Score"]
