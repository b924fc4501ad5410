"""What an operator watches, as Prometheus metrics (prometheus-client, one registry per app): requests and errors by
route, latency, and over the most recent predictions the OOD-flag rate, the COVID-positive rate and the drift
statistic (Kolmogorov-Smirnov D of the last window's OOD scores against the validation scores the flag was set on;
``covidscreen monitor`` does the full test with false-alarm control)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from scipy.stats import ks_2samp

RECENT = 200  # predictions the rates are computed over
DRIFT_WINDOW = 50  # OOD scores per drift statistic (covidscreen monitor's default window)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

__all__ = ["CONTENT_TYPE_LATEST", "ServiceMetrics"]


class ServiceMetrics:
    """The service's metrics; :meth:`render` is the body of ``GET /metrics``."""

    def __init__(self, positive_class: str | None, baseline_ood: np.ndarray | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("covidscreen_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.errors = Counter("covidscreen_request_errors", "HTTP requests answered with status >= 400", ["route"],
                              registry=r)
        self.latency = Histogram("covidscreen_request_latency_seconds", "time to answer a request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.predictions = Counter("covidscreen_predictions", "predictions given", registry=r)
        self.flagged = Counter("covidscreen_ood_flagged", "predictions whose image was flagged out of distribution",
                               registry=r)
        self.ood_rate = Gauge("covidscreen_ood_flag_rate", f"share of the last {RECENT} scored images flagged out of "
                              "distribution", registry=r)
        self.positive_rate = Gauge("covidscreen_covid_positive_rate", f"share of the last {RECENT} decisions that "
                                   f"are {positive_class}", registry=r)
        self.drift = Gauge("covidscreen_drift_statistic", f"Kolmogorov-Smirnov D of the last {DRIFT_WINDOW} OOD "
                           "scores against the validation scores (NaN until a window is full)", registry=r)
        self.drift.set(float("nan"))
        self.positive_class = positive_class
        self.baseline = None if baseline_ood is None else np.asarray(baseline_ood, float)
        self._flags: deque[bool] = deque(maxlen=RECENT)
        self._positives: deque[bool] = deque(maxlen=RECENT)
        self._scores: deque[float] = deque(maxlen=DRIFT_WINDOW)
        self._lock = threading.Lock()

    def request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        if status >= 400:
            self.errors.labels(route).inc()
        self.latency.labels(route).observe(seconds)

    def prediction(self, decision: str | None, ood_score: float | None, in_distribution: bool | None) -> None:
        with self._lock:
            self.predictions.inc()
            self._positives.append(decision == self.positive_class)
            self.positive_rate.set(float(np.mean(self._positives)))
            if in_distribution is not None:
                self._flags.append(not in_distribution)
                self.flagged.inc(0 if in_distribution else 1)
                self.ood_rate.set(float(np.mean(self._flags)))
            if ood_score is not None and self.baseline is not None and len(self.baseline) >= 5:
                self._scores.append(float(ood_score))
                if len(self._scores) == DRIFT_WINDOW:
                    self.drift.set(float(ks_2samp(np.array(self._scores), self.baseline).statistic))

    def render(self) -> bytes:
        return generate_latest(self.registry)
