"""How an operating point of a run held on each validation site: the values and the sentence every surface shows.

One function, :func:`point_site_summary`, takes a :class:`~covidscreen.inference.run.Run` and a point name and
returns what the report, the model card, ``/v1/model``, the web page and the DICOM SR show, so that "specificity
0.39 on nih" reads the same everywhere. A run trained before per-site figures were stored gets a summary without
sites whose text says so (:data:`~covidscreen.inference.run.NO_SITE_FIGURES`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .run import DEFAULT_POINT, NO_SITE_FIGURES, OperatingPoint, Run, SiteFigures


@dataclass(frozen=True)
class PointSiteSummary:
    """One point's per-site validation figures, its weakest site, and the sentence that says it."""

    name: str  # the point's own name ("default" resolved to the point it stands for)
    threshold: float
    sites: tuple[SiteFigures, ...]  # sorted by site name; () when the run records none
    weakest: SiteFigures | None
    text: str  # e.g. "validation specificity 0.39 [0.30, 0.48] on nih (weakest of 3 sites); pooled 0.90"
    note: str | None = None  # the rule's fallback, when it had one


def _rate(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.2f}"


def _ci(ci: tuple[float, float] | None) -> str:
    return f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def site_text(point: OperatingPoint) -> str:
    """The sentence for ``point``: its weakest site's validation specificity next to the pooled one."""
    if not point.sites:
        return NO_SITE_FIGURES
    weak = point.sites.get(point.weakest_site or "")
    if weak is None:
        return f"no validation site had non-positive images to measure specificity on; pooled specificity " \
               f"{_rate(point.specificity)}"
    text = (f"validation specificity {_rate(weak.specificity)}{_ci(weak.specificity_ci)} on {weak.site} "
            f"(weakest of {len(point.sites)} site(s), {weak.n_negative} non-positive images there); pooled "
            f"{_rate(point.specificity)}")
    # sites too small to be named the weakest, but worse: said, not hidden
    worse = [f for f in point.sites.values() if f.site != weak.site
             and not math.isnan(f.specificity) and f.specificity < weak.specificity]
    if worse:
        text += "; lower but on too few images to be rated: " + ", ".join(
            f"{f.site} {_rate(f.specificity)} ({f.n_negative} images)" for f in sorted(worse, key=lambda f: f.site))
    return text


def point_site_summary(run: Run, name: str = DEFAULT_POINT) -> PointSiteSummary | None:
    """The per-site summary of the run's point ``name`` (None: the run has no threshold).

    Raises:
        DataError: ``name`` is not one of the run's points.
    """
    point = run.point(name)
    if point is None:
        return None
    shown = run.operating_points.get(run.default_point, point) if name == DEFAULT_POINT else point
    sites = tuple(shown.sites[k] for k in sorted(shown.sites))
    return PointSiteSummary(run.default_point if name == DEFAULT_POINT else name, float(shown.threshold), sites,
                            shown.sites.get(shown.weakest_site or ""), site_text(shown), shown.note)
