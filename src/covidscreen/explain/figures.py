"""Pictures of explanations: the per-image PNG, small overlays for HTML pages, and the contact sheet."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402
from PIL import Image  # noqa: E402

from ..data.preprocess import InputGeometry  # noqa: E402
from .cam import Explanation  # noqa: E402
from .regions import DEFAULT_MARGIN  # noqa: E402

METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "scorecam": "Score-CAM", "eigencam": "Eigen-CAM"}
CMAP = "jet"
ALPHA = 0.55
VIEW_COLOUR = "yellow"  # outline of the part of the image a cropping run's model saw
UNSEEN_DIM = 0.45  # opacity of the dark veil over what was cropped away: plain X-ray, no heatmap colour


PNG_COMPRESS_LEVEL = 1  # zlib level of figure PNGs: PIL's default 6 takes 2.5x the CPU for files ~12% smaller
TIGHT_PAD_INCHES = 0.1  # savefig's default pad_inches around the tight box
CANVAS_MARGIN_PX = 128  # figure_png draws this far past the figure's edges (labels that stick out)


def figure_png(fig, dpi: int) -> bytes:
    """The figure as PNG bytes, cropped to its artists plus 0.1 inch, as ``savefig(bbox_inches="tight")`` does,
    and closed.

    ``savefig`` with a tight box draws the figure twice (once to measure the box, once to render into it): text
    layout, ticks and image resampling all twice. Here the figure is drawn once, onto a canvas ``CANVAS_MARGIN_PX``
    larger on every side (labels that reach past the figure's edge are drawn too), and its pixels are cropped to
    the tight box, measured after the draw. Artists reaching further than that margin (a very long line of text)
    go through ``savefig`` into the box already measured (one more draw).
    """
    try:
        fig.set_dpi(dpi)  # the box below is measured at the dpi the pixels were drawn at (text extents depend on it)
        width, height = fig.get_size_inches()
        margin = CANVAS_MARGIN_PX / dpi
        canvas_box = Bbox([[-margin, -margin], [width + margin, height + margin]])
        raw = io.BytesIO()
        fig.savefig(raw, format="rgba", dpi=dpi, bbox_inches=canvas_box)  # an explicit box: drawn once
        rgba = _raw_rgba(raw.getbuffer(), canvas_box.width * dpi, canvas_box.height * dpi)
        box = fig.get_tightbbox(fig.canvas.get_renderer())  # inches, the figure's own corner at (0, 0)
        # the padded box in the canvas's pixels (row 0 at the top), of the size savefig gives it (Agg truncates a
        # figure's size in pixels) and anchored as savefig anchors it: at its bottom-left corner
        height_px = int((box.height + 2 * TIGHT_PAD_INCHES) * dpi)
        rows = rgba.shape[0] if rgba is not None else 0
        top = round(rows - height_px - (box.y0 - TIGHT_PAD_INCHES) * dpi - CANVAS_MARGIN_PX)
        left = round((box.x0 - TIGHT_PAD_INCHES) * dpi + CANVAS_MARGIN_PX)
        bottom, right = top + height_px, left + int((box.width + 2 * TIGHT_PAD_INCHES) * dpi)
        buf = io.BytesIO()
        if rgba is None or top < 0 or left < 0 or bottom > rgba.shape[0] or right > rgba.shape[1]:
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches=box.padded(TIGHT_PAD_INCHES),
                        pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
            return buf.getvalue()
        Image.fromarray(rgba[top:bottom, left:right]).save(buf, format="png", compress_level=PNG_COMPRESS_LEVEL,
                                                           dpi=(dpi, dpi))
        return buf.getvalue()
    finally:
        plt.close(fig)


def _raw_rgba(raw, width: float, height: float) -> np.ndarray | None:
    """The ``(rows, columns, 4)`` pixels of ``savefig(format="rgba")`` for a canvas of about ``width`` x ``height``
    pixels (Agg truncates the figure's size after its own float arithmetic: one pixel either way); None when no
    size fits the bytes."""
    n = len(raw) // 4
    for cols in sorted({int(width), int(width) + 1, int(width) - 1}, key=lambda c: abs(c - width)):
        if cols > 0 and n % cols == 0 and abs(n // cols - height) <= 1:
            return np.frombuffer(raw, np.uint8).reshape(n // cols, cols, 4)
    return None


def img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    """An ``<img>`` with the PNG embedded (reports are single files)."""
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _overlay(ax, e: Explanation, margin: float | None):
    ax.imshow(e.image, cmap="gray", interpolation="bilinear")
    # opacity grows with the map's value: unimportant areas stay plain X-ray instead of a blue veil
    rgba = plt.get_cmap(CMAP)(np.clip(e.heatmap, 0, 1))
    rgba[..., 3] = ALPHA * np.clip(e.heatmap / 0.2, 0, 1)
    ax.imshow(rgba, interpolation="bilinear")
    im = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=CMAP)
    h, w = e.image.shape
    if e.view is not None and e.view.crops:
        # what the model never saw: darkened, never coloured (the map is 0 there), inside a solid outline
        v = e.view
        veil = np.full((h, w, 4), (0, 0, 0, UNSEEN_DIM))
        veil[v.top:v.bottom, v.left:v.right, 3] = 0
        ax.imshow(veil, interpolation="nearest")
        ax.add_patch(Rectangle((v.left - 0.5, v.top - 0.5), v.right - v.left, v.bottom - v.top, fill=False, ls="-",
                               lw=1.2, ec=VIEW_COLOUR))
    if e.mask is not None:
        region = np.asarray(Image.fromarray(np.asarray(e.mask, bool).astype(np.uint8) * 255).resize(
            (w, h), Image.Resampling.NEAREST)) > 127
        ax.contour(region.astype(float), levels=[0.5], colors="white", linestyles="--", linewidths=1)
    elif margin is not None:
        dy, dx = round(margin * h), round(margin * w)
        ax.add_patch(Rectangle((dx - 0.5, dy - 0.5), w - 2 * dx, h - 2 * dy, fill=False, ls="--", lw=1, ec="white"))
    ax.set_axis_off()
    return im


def _fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def view_line(view: InputGeometry) -> str:
    """The figure legend of a cropping run's view box."""
    return (f"{VIEW_COLOUR} box = what the model saw (rows {view.top}-{view.bottom}, columns {view.left}-{view.right}"
            "); the run crops its inputs, so outside the box the model saw nothing and the map is 0 (darkened, "
            "no colour)")


def check_lines(checks: dict) -> list[str]:
    """Plain-language lines of the sanity checks of one image (empty when none were run)."""
    lines = []
    rnd = checks.get("randomisation")
    if rnd:
        verdict = {True: "changes under re-initialisation", False: "FAILED: map survives every re-initialisation",
                   None: "undefined: empty map"}[rnd["passed"]]
        rhos = ", ".join(_fmt(r) for r in rnd["spearman"])
        lines.append(f"randomisation test: Spearman {rhos} after re-initialising {' / '.join(rnd['randomised'])}"
                     f" ({verdict})")
    if checks.get("road") is not None:
        lines.append(f"ROAD faithfulness: {_fmt(checks['road'], 3)} (higher = map points at what the model uses)")
    return lines


def _for_display(e: Explanation, max_side: int) -> Explanation:
    """A copy with image and map shrunk to at most ``max_side`` pixels (figures show ~400 px; plotting 1024 px
    images with interpolation is what makes figures slow). Scores are left as computed at full size."""
    h, w = e.image.shape
    if max(h, w) <= max_side:
        return e
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    image = np.asarray(Image.fromarray(e.image).resize(size, Image.Resampling.BILINEAR))
    heat = np.asarray(Image.fromarray(e.heatmap.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))
    view = e.view.scaled_to(size[1], size[0]) if e.view is not None else None
    return dataclasses.replace(e, image=image, heatmap=np.clip(heat, 0, 1), view=view)


def explanation_png(e: Explanation, margin: float | None = DEFAULT_MARGIN, title: str | None = None,
                    dpi: int = 100) -> bytes:
    """The per-image figure: X-ray, heatmap overlay with colour bar and chest box, class probabilities."""
    h, w = e.image.shape  # the true size, shown in the title
    view = e.view  # in the true size's pixels, shown in the legend
    e = _for_display(e, 512)
    lines = [title or (e.source or "image"),
             f"explained class: {e.target_name} | highest probability: {e.predicted} | "
             f"{'outside-mask' if e.mask is not None else 'border'} fraction "
             f"{_fmt(e.border_fraction)} (uniform map{' over what the model saw' if view is not None else ''}: "
             f"{_fmt(e.border_area)}; dashed line = "
             f"{'chest mask' if e.mask is not None else 'central chest region'})"]
    if view is not None and view.crops:
        lines.append(view_line(view))
    lines += check_lines(e.checks)
    # fixed axes positions (inches -> figure fractions) so that colour bar and bar labels never overlap; titles at
    # y=1 (where matplotlib puts them anyway: no tick labels above the axes) skip its search for tick labels in the
    # way, which measured every axis's ticks again on each draw
    fig_w, panel_w = 11.5, 3.5
    img_h = panel_w * min(max(h / w, 0.5), 1.8)
    text_h = 0.19 * len(lines) + 0.25
    fig_h = img_h + text_h + 0.25
    fig = plt.figure(figsize=(fig_w, fig_h))
    bottom, height = 0.2 / fig_h, img_h / fig_h
    ax0 = fig.add_axes((0.01, bottom, panel_w / fig_w, height))
    ax1 = fig.add_axes((0.02 + panel_w / fig_w, bottom, panel_w / fig_w, height))
    cax = fig.add_axes((0.035 + 2 * panel_w / fig_w, bottom + 0.1 * height, 0.012, 0.8 * height))
    ax2 = fig.add_axes((0.8, bottom + 0.15 * height, 0.18, 0.7 * height))
    ax0.imshow(e.image, cmap="gray", interpolation="bilinear")
    ax0.set_axis_off()
    ax0.set_title(f"X-ray ({w} x {h} px)", fontsize=9, y=1)
    im = _overlay(ax1, e, margin)
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("relative importance", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    ax1.set_title(f"{METHOD_NAMES.get(e.method, e.method)} for class '{e.target_name}'", fontsize=9, y=1)
    colours = ["tab:red" if i == e.target else "tab:grey" for i in range(len(e.classes))]
    y = np.arange(len(e.classes))
    ax2.barh(y, e.probs, color=colours)
    for i, p in enumerate(e.probs):
        inside = p > 0.7
        ax2.text(p - 0.02 if inside else p + 0.02, i, f"{p:.3f}", va="center", ha="right" if inside else "left",
                 fontsize=8, color="white" if inside else "black")
    ax2.set_yticks(y, e.classes, fontsize=8)
    ax2.invert_yaxis()
    ax2.set_xlim(0, 1)
    ax2.set_title("predicted probabilities\n(red: explained class)", fontsize=9, y=1)
    ax2.tick_params(axis="x", labelsize=7)
    fig.text(0.01, 1 - 0.1 / fig_h, "\n".join(lines), fontsize=9, va="top", ha="left")
    return figure_png(fig, dpi)


def overlay_png(e: Explanation, margin: float | None = DEFAULT_MARGIN, inches: float = 2.3, dpi: int = 72) -> bytes:
    """A small overlay (no text) for grids in HTML pages."""
    e = _for_display(e, 256)
    h, w = e.image.shape
    fig, ax = plt.subplots(figsize=(inches, inches * h / w))
    _overlay(ax, e, margin)
    fig.subplots_adjust(0, 0, 1, 1)
    return figure_png(fig, dpi)


PAGE_STYLE = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:14px}.card{width:300px;font-size:.85em}.card img{width:300px}
.warn{background:#fff3cd;border:1px solid #e0c36b;padding:.6em 1em;margin:.4em 0}.err{color:#a00}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f4f4f4}
"""


def contact_sheet_html(cards: Sequence[dict], title: str, notes: Sequence[str] = ()) -> str:
    """A page of linked images: each card has ``href`` (the PNG), ``caption`` lines and optionally ``error``."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style>"
             f"</head><body><h1>{html.escape(title)}</h1>"]
    parts += [f"<p>{html.escape(n)}</p>" for n in notes]
    parts.append("<div class='grid'>")
    for c in cards:
        cap = "<br>".join(html.escape(x) for x in c.get("caption", []))
        if c.get("error"):
            parts.append(f"<div class='card'><b>{html.escape(c['name'])}</b><br><span class='err'>"
                         f"{html.escape(c['error'])}</span></div>")
        else:
            href = html.escape(c["href"])
            parts.append(f"<div class='card'><a href='{href}'><img src='{href}' alt='{html.escape(c['name'])}'></a>"
                         f"<br>{cap}</div>")
    parts.append("</div></body></html>")
    return "\n".join(parts)
