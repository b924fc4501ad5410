"""C-STORE to a remote node (pynetdicom SCU): one association per call, every DIMSE status checked; C-FIND for the
results a node already holds (the outbox's check of a send that a crash interrupted)."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification

from ..errors import CovidscreenError
from .address import AeAddress

#: Success and the storage warnings (coercion of data elements, elements discarded, data set does not match SOP class)
STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}


class SendError(CovidscreenError):
    """A remote node could not be reached, refused the association or refused a dataset."""


def _ae(calling_aet: str, timeout_s: float) -> AE:
    ae = AE(ae_title=calling_aet)
    ae.connection_timeout = min(timeout_s, 10.0)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    return ae


def _status_text(status: Dataset | None) -> str:
    if status is None or "Status" not in status:
        return "no response (connection lost or timed out)"
    comment = f": {status.ErrorComment}" if "ErrorComment" in status else ""
    return f"status 0x{int(status.Status):04X}{comment}"


def store(datasets: Sequence[Dataset], to: AeAddress, calling_aet: str = "COVIDSCREEN",
          timeout_s: float = 30.0) -> list[str | None]:
    """C-STORE ``datasets`` to ``to`` in one association.

    Returns:
        Per dataset, None when stored, else why the remote node refused it.

    Raises:
        SendError: the node cannot be reached or rejects or aborts the association (nothing was stored then, or only
            the datasets before the failure; resending is safe: a PACS keeps one copy per SOP Instance UID).
    """
    if not datasets:
        return []
    ae = _ae(calling_aet, timeout_s)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(to.host, to.port, ae_title=to.ae_title)
    if not assoc.is_established:
        # pynetdicom reports a refused TCP connection as an abort: both mean "not there now"
        why = "rejected the association" if assoc.is_rejected else "could not be reached (or aborted the association)"
        raise SendError(f"{to} {why} (is the PACS running, and is AE title {calling_aet} allowed to store there?)")
    results: list[str | None] = []
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:  # no accepted context for this SOP class / transfer syntax
                results.append(f"not sent: {exc}")
                continue
            if status is None or "Status" not in status:
                raise SendError(f"{to} did not answer a C-STORE ({_status_text(status)})")
            results.append(None if int(status.Status) in STORE_OK else _status_text(status))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(to: AeAddress, calling_aet: str = "COVIDSCREEN", timeout_s: float = 10.0) -> bool:
    """C-ECHO: True when ``to`` answers with success."""
    ae = _ae(calling_aet, timeout_s)
    ae.add_requested_context(Verification)
    assoc = ae.associate(to.host, to.port, ae_title=to.ae_title)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return status is not None and int(status.get("Status", -1)) == 0
    finally:
        if assoc.is_established:
            assoc.release()


def find_instances(datasets: Sequence[Dataset], to: AeAddress, calling_aet: str = "COVIDSCREEN",
                   timeout_s: float = 30.0) -> set[str] | None:
    """The SOP Instance UIDs among ``datasets`` that ``to`` holds, by C-FIND (Study Root, IMAGE level, one query per
    series); None when ``to`` does not offer C-FIND (then nobody can tell).

    Raises:
        SendError: ``to`` cannot be reached, or a query failed.
    """
    wanted = {str(ds.SOPInstanceUID) for ds in datasets}
    if not wanted:
        return set()
    ae = _ae(calling_aet, timeout_s)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate(to.host, to.port, ae_title=to.ae_title)
    if not assoc.is_established:
        raise SendError(f"{to} could not be reached for a C-FIND")
    held: set[str] = set()
    try:
        if not any(cx.abstract_syntax == StudyRootQueryRetrieveInformationModelFind
                   for cx in assoc.accepted_contexts):
            return None
        for study, series in sorted({(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)) for ds in datasets}):
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID, query.SOPInstanceUID = study, series, ""
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if status is None or "Status" not in status:
                    raise SendError(f"{to} did not answer a C-FIND")
                code = int(status.Status)
                if code in (0xFF00, 0xFF01) and identifier is not None:
                    held.add(str(identifier.get("SOPInstanceUID", "")))
                elif code != 0x0000:
                    raise SendError(f"{to} refused a C-FIND ({_status_text(status)})")
    finally:
        if assoc.is_established:
            assoc.release()
    return held & wanted
