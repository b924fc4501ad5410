"""Knowing when not to answer: a per-image out-of-distribution (OOD) score and flag.

A detector (:mod:`.detectors`: Mahalanobis, KNN, ViM, energy, through pytorch-ood) is fitted on the head-input
features of a run's training images, which the run's own :class:`~covidscreen.inference.predictor.Predictor`
computes (:mod:`.fit`), together with an orientation check (:mod:`.orientation`: is the image upright, or turned?)
whose score joins the detector's; the threshold is set on the validation split so that a stated share of in-distribution
images (default 5%) is flagged. The fitted model is stored in the run folder as safetensors and hashed in the
sidecar like the weights (:mod:`.model`); :func:`attach_ood` gives it to a Predictor, whose every result then
carries ``ood_score`` and ``in_distribution``. :mod:`.probes` builds inputs that are not frontal chest X-rays
(photos, CT slices, blank, noise, text, rotated and flipped X-rays) to measure the flag. docs/safety.md has the
comparison of detectors and the measured flag rates.
"""

from .model import OOD_FILE, PLAIN_WARNING, OODModel, OODWarning, attach_ood, fit_command, load_ood, save_ood

__all__ = ["OOD_FILE", "PLAIN_WARNING", "OODModel", "OODWarning", "attach_ood", "fit_command", "load_ood", "save_ood"]
