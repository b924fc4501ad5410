"""DICOMweb (dicomweb-client): find radiographs by QIDO-RS, fetch them by WADO-RS, store results by STOW-RS.

:class:`DicomwebServer` wraps one server (base URL, optional authentication) with every failure turned into a
:class:`DicomwebError` that says what was asked and what went wrong: a server that cannot be reached, an HTTP 4xx or
5xx answer, or an answer that is not DICOM (or not DICOM JSON). ``watch.py`` uses it for ``covidscreen
dicomweb-watch``; the outbox uses it for DICOMweb destinations.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence

import requests
from pydicom.dataset import Dataset

from ..errors import ConfigError
from .scu import SendError

log = logging.getLogger("covidscreen.dicomnet")

RADIOGRAPH_MODALITIES = ("CR", "DX")
PAGE, MAX_PAGES = 500, 10_000  # QIDO-RS paging


class DicomwebError(SendError):
    """A DICOMweb server could not be reached, refused a request, or did not answer with DICOM."""


def parse_auth(auth: str | None) -> tuple[str, str] | str | None:
    """``USER:PASSWORD`` (HTTP basic) or ``bearer:TOKEN``; the value may also name an environment variable as
    ``env:NAME`` so that a secret need not be on the command line.

    Raises:
        ConfigError: neither form.
    """
    if not auth:
        return None
    if auth.startswith("env:"):
        value = os.environ.get(auth[4:])
        if not value:
            raise ConfigError(f"--auth {auth}: the environment variable {auth[4:]} is not set")
        auth = value
    if auth.lower().startswith("bearer:") and len(auth) > 7:
        return auth[7:]
    user, sep, password = auth.partition(":")
    if not sep or not user:
        raise ConfigError("--auth is invalid: expected USER:PASSWORD (HTTP basic), bearer:TOKEN, or env:NAME of a "
                          "variable holding one of them")
    return user, password


def check_url(url: str) -> str:
    url = str(url).rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url) < 10:
        raise ConfigError(f"DICOMweb URL {url!r} is invalid: expected the service root, e.g. "
                          "http://orthanc:8042/dicom-web")
    return url


class DicomwebServer:
    """One DICOMweb service root (``http://host:8042/dicom-web``)."""

    def __init__(self, url: str, auth: str | None = None, timeout_s: float = 30.0) -> None:
        # optional dependency: covidscreen[dicom] (dicomweb-client, for DICOMweb only)
        from dicomweb_client.api import DICOMwebClient

        self.url = check_url(url)
        session = requests.Session()
        credentials = parse_auth(auth)
        if isinstance(credentials, tuple):
            session.auth = credentials
        elif credentials:
            session.headers["Authorization"] = f"Bearer {credentials}"
        self.client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        # no hidden retries (dicomweb-client's retry wrapper also retries a refused connection, for 30 s): the
        # watch retries at its next pass, the outbox with its own backoff
        self.client.set_http_retry_params(retry=False)

    def __str__(self) -> str:
        return self.url

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as exc:
            resp = exc.response
            status = resp.status_code if resp is not None else "?"
            reason = (resp.reason if resp is not None else "") or ""
            hint = {401: " (give --auth)", 403: " (not allowed for these credentials)",
                    404: " (is the URL the DICOMweb root, e.g. .../dicom-web?)"}.get(status, "")
            raise DicomwebError(f"DICOMweb server {self.url} answered HTTP {status} {reason} to {what}{hint}") \
                from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise DicomwebError(f"DICOMweb server {self.url} cannot be reached for {what} ({type(exc).__name__}): "
                                "is it running, and is the URL right?") from None
        except (ValueError, TypeError, KeyError, AttributeError) as exc:  # HTML, plain JSON, broken multipart
            raise DicomwebError(f"DICOMweb server {self.url} did not answer {what} with DICOM ({exc}); is the URL "
                                "the DICOMweb root?") from None

    def radiographs(self) -> list[tuple[str, str, str]]:
        """(study, series, SOP instance) UIDs of the CR and DX instances the server holds (QIDO-RS)."""
        found = []
        for modality in RADIOGRAPH_MODALITIES:
            for hit in self._search(f"QIDO-RS search for Modality {modality}", search_filters={"Modality": modality}):
                try:
                    found.append((hit["0020000D"]["Value"][0], hit["0020000E"]["Value"][0],
                                  hit["00080018"]["Value"][0]))
                except (KeyError, IndexError, TypeError):
                    raise DicomwebError(f"DICOMweb server {self.url} did not answer QIDO-RS with DICOM JSON (an "
                                        f"instance without its UIDs: {str(hit)[:120]})") from None
        return sorted(set(found))

    def _search(self, what: str, **query) -> list:
        """All pages of a QIDO-RS instance search (``limit``/``offset``; bounded: a server that ignores ``offset``
        ends the paging when a page repeats)."""
        hits, seen = [], set()
        for page_number in range(MAX_PAGES):
            page = self._call(what, self.client.search_for_instances, limit=PAGE, offset=page_number * PAGE, **query)
            if not isinstance(page, list) or not all(isinstance(h, dict) for h in page):
                raise DicomwebError(f"DICOMweb server {self.url} did not answer {what} with DICOM JSON (got "
                                    f"{str(page)[:120]}); is the URL the DICOMweb root?")
            key = json.dumps(page[:1], sort_keys=True)
            if not page or key in seen:
                break
            seen.add(key)
            hits += page
            if len(page) < PAGE:
                break
        return hits

    def retrieve(self, study: str, series: str, sop: str) -> Dataset:
        ds = self._call(f"WADO-RS retrieval of instance {sop}", self.client.retrieve_instance, study, series, sop)
        if not isinstance(ds, Dataset):
            raise DicomwebError(f"DICOMweb server {self.url} did not answer WADO-RS for {sop} with a DICOM instance")
        return ds

    def store(self, datasets: Sequence[Dataset]) -> list[str | None]:
        """STOW-RS, one request per study (into that study); per dataset None when stored, else why not."""
        out: dict[str, str | None] = {}
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        for study, group in by_study.items():
            answer = self._call(f"STOW-RS of {len(group)} object(s) into study {study}", self.client.store_instances,
                                group, study_instance_uid=study)
            failed = {str(it.get("ReferencedSOPInstanceUID", "")): f"failure reason {it.get('FailureReason', '?')}"
                      for it in (getattr(answer, "FailedSOPSequence", None) or [])}
            for ds in group:
                out[str(ds.SOPInstanceUID)] = failed.get(str(ds.SOPInstanceUID))
        return [out[str(ds.SOPInstanceUID)] for ds in datasets]

    def held(self, datasets: Sequence[Dataset]) -> set[str]:
        """The SOP Instance UIDs among ``datasets`` the server holds (QIDO-RS per series)."""
        held: set[str] = set()
        for study, series in sorted({(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)) for ds in datasets}):
            hits = self._search("QIDO-RS check of results already stored", study_instance_uid=study,
                                series_instance_uid=series)
            held |= {h.get("00080018", {}).get("Value", [""])[0] for h in hits}
        return held & {str(ds.SOPInstanceUID) for ds in datasets}
