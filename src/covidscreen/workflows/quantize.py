"""INT8 export of a run for CPU inference: ONNX Runtime static QDQ quantisation, calibrated on images of every site
of the run's training split, the float32 part of the network chosen on its validation images, and accepted only if
the run's test images say it keeps the model's accuracy and decisions.

Static QDQ quantises every convolution and matrix multiply (weights int8 per channel, activations uint8 per tensor
with ranges from the calibration images); dynamic quantisation would touch only the last linear layer of a CNN.
What moves a model's decisions is where the activations are rounded, and a node left in float32 stops the rounding
only of the tensors that lie wholly inside a float32 region: ONNX Runtime still quantises every tensor that an INT8
node reads or writes. One convolution kept in float32 in the middle of the network therefore changes almost nothing
(measured on the quickstart model: most such single exclusions left the output error as it was or made it larger,
up to 16 times; ``docs/performance.md``), while the two ends of the network are different: the stem is the only node
that reads the image, so keeping it in float32 also keeps the image itself unrounded (two thirds of the output error
of the all-INT8 quickstart model), and the head's output is the logits.

:func:`export_int8` therefore searches, on the validation split, a bounded ladder of float32 regions grown from the
two ends (:data:`DEFAULT_VARIANTS`, smallest first: every node INT8; the stem; the stem and the head (last
convolution and classifier); also squeeze-excitation gates where the network has them; then the stem region grown
by 2, 4 and 8 further compute nodes), calibrating once per calibration method (MinMax by default; Percentile and
Entropy on request, compared in ``benchmarks/bench_int8.py``) and reusing the ranges for every rung. It takes the
first rung whose decisions at the run's default operating point change for at most half of ``max_changed`` of the
validation images (else the one that changed fewest), and then the guard decides on the test split, which played
no part in the choice: the INT8 model serves (``model.json`` ``onnx.serving``) only if there its ROC AUC (positive
class vs rest) is at most ``max_auc_drop`` below the FP32 export's and its decisions differ for at most
``max_changed`` of the images; otherwise the FP32 export keeps serving and the sidecar says why. Every rung tried is
recorded with its validation figures.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..data.preprocess import load_preprocessed
from ..errors import CovidscreenError, DataError, ImageDecodeError
from ..evaluation.metrics import headline_auc, predict_labels
from ..inference.onnx import ONNX_FILE, export_onnx, session_options
from ..inference.run import load_run, update_record
from ..runtime import sha256_file
from ..segmentation import load_segmenter_for

INT8_FILE = "model.int8.onnx"
#: onnxruntime's calibration methods, by the names the sidecar and benchmarks use
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: kinds of nodes a variant may keep in float32 (:func:`sensitive_nodes`)
SENSITIVE_KINDS = ("stem", "head", "se")
#: the compute nodes (matrix products) whose inputs and outputs quantisation rounds
COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
#: activations that directly follow a compute node and belong to its float32 region
_ACTIVATIONS = ("Clip", "Relu", "LeakyRelu", "HardSwish", "HardSigmoid", "Sigmoid")


def following_activation(nodes: list[Any], node: Any) -> Any | None:
    """The activation that alone reads ``node``'s output in the graph's ``nodes`` (it belongs to ``node``'s float32
    region), else None."""
    after = [n for n in nodes if node.output[0] in n.input]
    return after[0] if len(after) == 1 and after[0].op_type in _ACTIVATIONS else None


@dataclass(frozen=True)
class Int8Variant:
    """One way to quantise: a calibration method, the kinds of sensitive nodes kept in float32
    (:func:`sensitive_nodes`), and how many compute nodes after the stem also stay float32 (``front``: the float32
    region at the input grown along the network, :func:`front_region`)."""

    method: str = "minmax"
    keep_fp32: tuple[str, ...] = ()
    front: int = 0

    @property
    def name(self) -> str:
        kept = [*self.keep_fp32] + ([f"front {self.front}"] if self.front else [])
        return self.method + (f", {'+'.join(kept)} in fp32" if kept else "")


#: the ladder :func:`export_int8` climbs, smallest float32 part first (the module docstring says why these
#: regions). Entropy and Percentile calibration are left out: on the quickstart model neither kept more decisions
#: than MinMax (``docs/performance.md``), and each costs a histogram pass of minutes; ``Int8Variant("percentile")``
#: still runs it.
DEFAULT_VARIANTS = (Int8Variant(), Int8Variant(keep_fp32=("stem",)), Int8Variant(keep_fp32=("stem", "head")),
                    Int8Variant(keep_fp32=SENSITIVE_KINDS), Int8Variant(keep_fp32=SENSITIVE_KINDS, front=2),
                    Int8Variant(keep_fp32=SENSITIVE_KINDS, front=4), Int8Variant(keep_fp32=SENSITIVE_KINDS, front=8))


@dataclass
class QuantisationResult:
    """What the exporter decided, and the figures it decided on."""

    accepted: bool
    serving: str  # the file that serves: model.int8.onnx or model.onnx
    checks: dict[str, Any]
    message: str


def _split_table(run_dir: Path, split: str) -> pd.DataFrame:
    table_file = Path(run_dir) / "split.csv"
    if not table_file.is_file():
        raise DataError(f"{run_dir} has no split.csv: INT8 export needs the run's training, validation and test "
                        "images")
    table = pd.read_csv(table_file)
    return table[table["split"] == split]


def split_images(run_dir: Path, split: str, limit: int | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The run's ``split`` images (``split.csv``), preprocessed as the run's predictions are, and their labels;
    at most ``limit`` of them, drawn at random with ``seed``."""
    table = _split_table(run_dir, split)
    if limit is not None and len(table) > limit:
        table = table.sample(n=limit, random_state=seed)
    return _load_images(Path(run_dir), table, split)


def calibration_set(run_dir: Path, limit: int, seed: int = 0) -> tuple[np.ndarray, dict[str, int]]:
    """``limit`` images of the run's training split drawn from every site and label alike: each (site, label) group
    gives its first image (in a seeded shuffle), then its second, and so on, until ``limit`` are drawn, so that a
    small site's intensity range is in the calibration as much as a large one's. Returns the images and how many
    came from each site."""
    table = _split_table(run_dir, "train")
    if table.empty:
        raise DataError("the run's training split is empty: INT8 calibration needs training images")
    table = table.sample(frac=1.0, random_state=seed)
    site = table["site"].fillna("unknown").astype(str) if "site" in table else pd.Series("unknown", table.index)
    rank = table.assign(_site=site).groupby(["_site", "label"], sort=False).cumcount()
    table = table.assign(_site=site, _rank=rank).sort_values("_rank", kind="stable").head(limit)
    images, _ = _load_images(Path(run_dir), table, "train")
    return images, {str(k): int(v) for k, v in table["_site"].value_counts().sort_index().items()}


def _load_images(run_dir: Path, table: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray]:
    run = load_run(run_dir)
    data_dir = Path(run.data_dir or ".")
    segmenter = load_segmenter_for(run.preprocess, base_dir=run.path)
    images, labels = [], []
    for _, row in table.iterrows():
        path = Path(row["path"]) if "path" in row and isinstance(row["path"], str) else data_dir / row["image"]
        try:
            images.append(load_preprocessed(path, run.image_size, run.preprocess, segmenter))
        except (ImageDecodeError, FileNotFoundError) as exc:
            raise DataError(f"{split} image {path} of the run can no longer be read ({exc}); INT8 export needs the "
                            "run's data folder as it was at training") from None
        labels.append(list(run.classes).index(row["label"]))
    if not images:
        raise DataError(f"the run's {split} split is empty: INT8 export needs {split} images")
    return np.stack(images), np.asarray(labels)


def _session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort  # optional dependency: covidscreen[onnx]

    return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])


def onnx_probabilities(session: Any, images: np.ndarray, temperature: float = 1.0, batch: int = 32) -> np.ndarray:
    """Softmax of ``logits / temperature`` of a uint8 ``(N, S, S)`` array through an ONNX session."""
    out = []
    for start in range(0, len(images), batch):
        x = images[start:start + batch].astype(np.float32)[:, None] / 255.0
        logits = session.run(None, {"image": x})[0].astype(np.float64) / temperature
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        out.append(e / e.sum(1, keepdims=True))
    return np.concatenate(out)


def sensitive_nodes(model: Any, kinds: tuple[str, ...] = SENSITIVE_KINDS) -> list[str]:
    """Names of the nodes of an ONNX ``model`` (an ``onnx.ModelProto``) that INT8 hurts most, by kind:

    - ``stem``: the first convolution (it sees the image itself, whose range the calibration must cover whole);
    - ``head``: the last convolution and every matrix product after the last global pooling (the logits);
    - ``se``: squeeze-excitation gates: convolutions and matrix products between a global pooling (GlobalAveragePool
      or ReduceMean) and a Sigmoid/HardSigmoid that gates a feature map (EfficientNet-B*, MobileNetV3; none in
      EfficientNet-Lite, which dropped them).
    """
    nodes = list(model.graph.node)
    convs = [i for i, n in enumerate(nodes) if n.op_type == "Conv"]
    products = {"Gemm", "MatMul", "Conv"}
    out: list[str] = []
    if "stem" in kinds and convs:
        out.append(nodes[convs[0]].name)
    if "head" in kinds and convs:
        pools = [i for i, n in enumerate(nodes) if n.op_type in ("GlobalAveragePool", "ReduceMean")]
        last_pool = pools[-1] if pools else convs[-1]
        out.append(nodes[convs[-1]].name)
        out += [n.name for n in nodes[last_pool + 1:] if n.op_type in products]
    if "se" in kinds:
        producer = {o: i for i, n in enumerate(nodes) for o in n.output}
        for n in nodes:
            if n.op_type not in ("Sigmoid", "HardSigmoid"):
                continue
            chain, j = [], producer.get(n.input[0])  # walk back from the gate to its pooling
            while j is not None and nodes[j].op_type not in ("GlobalAveragePool", "ReduceMean") and len(chain) < 8:
                chain.append(j)
                j = producer.get(nodes[j].input[0]) if nodes[j].input else None
            if j is not None and nodes[j].op_type in ("GlobalAveragePool", "ReduceMean"):
                out += [nodes[k].name for k in chain if nodes[k].op_type in products]
    return list(dict.fromkeys(name for name in out if name))


def front_region(model: Any, front: int) -> list[str]:
    """Names of the nodes of an ONNX ``model`` from its input up to and including the compute node (Conv, Gemm,
    MatMul) ``front`` places after the stem, with the activation that directly follows that node: everything before
    it in the graph's topological order, residual branches included, so that with these nodes in float32 no tensor
    between the image and the end of the region is rounded (the module docstring says why a region and not single
    nodes). ``front=0`` is the stem alone."""
    nodes = list(model.graph.node)
    compute = [i for i, n in enumerate(nodes) if n.op_type in COMPUTE_OPS]
    if not compute:
        return []
    end = compute[min(front, len(compute) - 1)]
    region = nodes[:end + 1]
    activation = following_activation(nodes, nodes[end])  # a reader of its output lies after it (topological order)
    if activation is not None:
        region.append(activation)
    return [n.name for n in region if n.name]


def fp32_nodes(model: Any, variant: Int8Variant) -> list[str]:
    """The nodes of ``model`` that ``variant`` keeps in float32: its :func:`sensitive_nodes` kinds and, with
    ``front``, the :func:`front_region` grown from the stem."""
    names = sensitive_nodes(model, variant.keep_fp32) if variant.keep_fp32 else []
    if variant.front:
        names += front_region(model, variant.front)
    return list(dict.fromkeys(names))


class QdqQuantiser:
    """ONNX Runtime static quantisation of one FP32 ONNX model in QDQ format: int8 weights per channel, uint8
    activations whose ranges come from ``calibration`` (uint8 images as the model's input takes them). The model is
    prepared (``quant_pre_process``) once, and the ranges are computed once per calibration method and kept in
    ``workdir`` (onnxruntime's ``calibration_cache_path``), so that each further variant costs only the rewrite of
    the graph, not another pass of the calibration images."""

    def __init__(self, fp32: Path, calibration: np.ndarray, workdir: Path,
                 calibration_options: dict[str, Any] | None = None) -> None:
        import onnx  # optional dependency: covidscreen[onnx]
        from onnxruntime.quantization.shape_inference import quant_pre_process  # optional dependency, as above

        self.calibration, self.workdir = calibration, Path(workdir)
        #: onnxruntime's calibration options (``extra_options``), e.g. ``{"CalibPercentile": 99.99}``
        self.calibration_options = dict(calibration_options or {})
        self.prepared = self.workdir / "prepared.onnx"
        quant_pre_process(str(fp32), str(self.prepared), skip_symbolic_shape=True)
        self.model = onnx.load(str(self.prepared))
        self.calibration_passes = 0  # how many times the calibration images went through the model

    def fp32_nodes(self, variant: Int8Variant) -> list[str]:
        return fp32_nodes(self.model, variant)

    def quantize(self, variant: Int8Variant, out: Path, extra_fp32: tuple[str, ...] = ()) -> list[str]:
        """Write ``variant`` to ``out``, with the nodes named in ``extra_fp32`` also in float32 (the per-node sweep
        of ``benchmarks/bench_int8_sensitivity.py``); returns the nodes kept in float32."""
        # optional dependency: covidscreen[onnx]
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                   "percentile": CalibrationMethod.Percentile}
        if variant.method not in methods:
            raise ValueError(f"calibration method {variant.method!r} is not known; use one of {', '.join(methods)}")
        calibration = self.calibration

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([calibration[i:i + 8].astype(np.float32)[:, None] / 255.0
                                     for i in range(0, len(calibration), 8)])

            def get_next(self) -> dict[str, np.ndarray] | None:
                x = next(self.batches, None)
                return None if x is None else {"image": x}

        ranges = self.workdir / f"ranges.{variant.method}.json"
        reader = None
        if not ranges.is_file():
            reader = Reader()
            self.calibration_passes += 1
        excluded = list(dict.fromkeys([*self.fp32_nodes(variant), *extra_fp32]))
        quantize_static(str(self.prepared), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[variant.method], nodes_to_exclude=excluded,
                        extra_options=self.calibration_options, calibration_cache_path=str(ranges))
        return excluded


def quantize_static_qdq(fp32: Path, out: Path, calibration: np.ndarray, method: str = "minmax",
                        keep_fp32: tuple[str, ...] = (), front: int = 0) -> list[str]:
    """One variant (:class:`QdqQuantiser`) of ``fp32`` written to ``out``: calibration ``method`` (minmax, entropy
    or percentile), the :func:`sensitive_nodes` of the kinds in ``keep_fp32`` and the :func:`front_region` of
    ``front`` in float32. Returns those nodes."""
    with tempfile.TemporaryDirectory(prefix="covidscreen-int8-") as work:
        return QdqQuantiser(fp32, calibration, Path(work)).quantize(Int8Variant(method, tuple(keep_fp32), front), out)


def export_int8(run_dir: str | Path, calibration_images: int = 128, max_auc_drop: float = 0.005,
                max_changed: float = 0.01, max_test_images: int | None = None,
                variants: tuple[Int8Variant, ...] = DEFAULT_VARIANTS, selection_images: int | None = None,
                log: Callable[[str], None] = print) -> QuantisationResult:
    """Quantise a run's ONNX export (made first if missing) to INT8 and serve it if the test split allows.

    Args:
        calibration_images: training images, from every site alike (:func:`calibration_set`), whose activations
            set the quantisation ranges.
        max_auc_drop: largest accepted fall of the test ROC AUC (positive class vs rest; macro one-vs-rest without
            a positive class).
        max_changed: largest accepted share of test images whose decision at the default operating point changes.
        max_test_images: check on at most this many test images (default: all).
        variants: the ladder of ways to quantise, climbed in order until one changes at most ``max_changed / 2``
            of the validation decisions (the module docstring); a rung that keeps the same nodes in float32 as an
            earlier one (squeeze-excitation on a network without it) is skipped.
        selection_images: validation images the variants are compared on (default: all of them; on the quickstart
            one changed decision is 0.07% of them).
        log: where the progress lines go, one per rung.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CovidscreenError("INT8 export needs onnx and onnxruntime: pip install 'covidscreen[onnx]'") from None
    if not variants:
        raise ValueError("export_int8 needs at least one variant")
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if run.onnx is None or not (run_dir / ONNX_FILE).is_file():
        export_onnx(run_dir)
        run = load_run(run_dir)
    seed = run.seed or 0
    calib, sites = calibration_set(run_dir, calibration_images, seed=seed)
    val_x, _ = split_images(run_dir, "val", selection_images, seed=seed)
    test_x, test_y = split_images(run_dir, "test", max_test_images, seed=seed)
    point = run.point("default")
    threshold = None if point is None else point.threshold
    temperature = run.temperature_for("default")

    def decisions(p: np.ndarray) -> np.ndarray:
        return predict_labels(p, run.positive_index, threshold)

    fp32 = _session(run_dir / ONNX_FILE)
    p32_val = onnx_probabilities(fp32, val_x, temperature)
    d32_val = decisions(p32_val)
    out = run_dir / INT8_FILE
    target = max_changed / 2
    log(f"INT8: ranges from {len(calib)} training images ({', '.join(f'{k} {v}' for k, v in sites.items())}); "
        f"climbing up to {len(variants)} variants until at most {math.floor(target * len(val_x) + 1e-9)} of "
        f"{len(val_x)} validation decisions change (<= {target:.2%})")
    tried: list[dict[str, Any]] = []
    # the run folder's own hidden scratch folder: the accepted model is renamed into place on the same file system
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=run_dir) as work:
        quantiser = QdqQuantiser(run_dir / ONNX_FILE, calib, Path(work))
        seen: dict[tuple[str, tuple[str, ...]], str] = {}
        best: tuple[float, int, Path] | None = None
        for i, variant in enumerate(variants):
            step = f"  [{i + 1}/{len(variants)}] {variant.name}"
            excluded = quantiser.fp32_nodes(variant)
            key = (variant.method, tuple(excluded))
            if key in seen:
                log(f"{step}: the same float32 nodes as '{seen[key]}', skipped")
                continue
            seen[key] = variant.name
            candidate = Path(work) / f"variant{i}.onnx"
            quantiser.quantize(variant, candidate)
            p8_val = onnx_probabilities(_session(candidate), val_x, temperature)
            changed_val = float(np.mean(decisions(p8_val) != d32_val))
            tried.append({"variant": variant.name, "method": variant.method, "keep_fp32": list(variant.keep_fp32),
                          "front": variant.front, "fp32_nodes": excluded, "val_decisions_changed": changed_val,
                          "val_mean_abs_probability_difference": float(np.abs(p8_val - p32_val).mean())})
            log(f"{step} ({len(excluded)} node(s) in fp32): {round(changed_val * len(val_x))} validation "
                f"decisions changed ({changed_val:.2%})")
            if best is None or changed_val < best[0]:
                if best is not None:
                    best[2].unlink()
                best = (changed_val, i, candidate)
            else:
                candidate.unlink()
            if changed_val <= target:
                break
        assert best is not None  # at least one variant, and the first one is never skipped
        chosen, chosen_file = variants[best[1]], best[2]
        chosen_nodes = next(t["fp32_nodes"] for t in tried if t["variant"] == chosen.name)

        p32 = onnx_probabilities(fp32, test_x, temperature)
        p8 = onnx_probabilities(_session(chosen_file), test_x, temperature)
        classes, pos = list(run.classes), run.positive_class
        auc32, auc8 = headline_auc(test_y, p32, classes, pos), headline_auc(test_y, p8, classes, pos)
        d32, d8 = decisions(p32), decisions(p8)
        changed = float(np.mean(d32 != d8))
        drop = auc32 - auc8 if math.isfinite(auc32) and math.isfinite(auc8) else math.nan
        checks = {"test_images": int(len(test_y)), "calibration_images": int(len(calib)), "roc_auc_fp32": auc32,
                  "roc_auc_int8": auc8, "roc_auc_drop": drop, "max_roc_auc_drop": max_auc_drop,
                  "decisions_changed": changed, "max_decisions_changed": max_changed,
                  "max_abs_probability_difference": float(np.abs(p32 - p8).max()), "variant": chosen.name,
                  "fp32_nodes": len(chosen_nodes), "calibration_sites": sites, "selection_images": int(len(val_x)),
                  "selection_target": target}
        failures = []
        if not (math.isfinite(drop) and drop <= max_auc_drop):
            failures.append(f"test ROC AUC {auc32:.4f} -> {auc8:.4f} (drop {drop:.4f} > {max_auc_drop})")
        if changed > max_changed:
            failures.append(f"{changed:.1%} of {len(test_y)} test decisions changed (> {max_changed:.1%})")
        info: dict = {}
        method = (f"onnxruntime static QDQ, weights int8 per channel, activations uint8, {chosen.name} "
                  f"({len(chosen_nodes)} node(s) in fp32; calibrated on {len(calib)} training images of "
                  f"{len(sites)} site(s); chosen on {len(val_x)} validation images)")
        if failures:
            out.unlink(missing_ok=True)
            info["int8"] = {"accepted": False, "reasons": failures, "checks": checks, "method": method,
                            "variants": tried}
            info["serving"] = {"file": ONNX_FILE, "sha256": run.onnx.sha256, "precision": "fp32"}
            message = f"INT8 ({chosen.name}) rejected, FP32 keeps serving: " + "; ".join(failures)
        else:
            chosen_file.replace(out)
            info["int8"] = {"accepted": True, "file": INT8_FILE, "sha256": sha256_file(out), "checks": checks,
                            "method": method, "variants": tried}
            info["serving"] = {"file": INT8_FILE, "sha256": info["int8"]["sha256"], "precision": "int8"}
            message = (f"INT8 ({chosen.name}) serves: test ROC AUC {auc32:.4f} -> {auc8:.4f}, {int(np.sum(d32 != d8))} "
                       f"of {len(test_y)} test decisions changed ({changed:.2%})")
    update_record(run_dir, merge={"onnx": info})
    return QuantisationResult(not failures, info["serving"]["file"], checks, message)


def export_job(run_dir: str | Path, int8: bool = False, calibration_images: int = 128) -> Iterator[str]:
    """``covidscreen export``: the ONNX export (checked against PyTorch), then with ``int8`` the INT8 export and its
    accuracy gate (:func:`export_int8`); yields the lines to print as each step ends, so that the float32 export is
    reported even when the INT8 step fails.

    Raises:
        CovidscreenError: onnx or onnxruntime missing.
    """
    yield f"wrote {export_onnx(run_dir)}"
    if int8:
        yield export_int8(run_dir, calibration_images=calibration_images).message

