"""Axis helpers: scales and ticks that fit the swept grids, y-limits that do not magnify noise, palettes, legends,
and tick labels thinned until none overlaps."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from gsdefense.plots._common import VANILLA, fmt, pct

# Metrics that live in [0, 1]: always drawn on [0, 1], so a 2-point difference looks like one.
BOUNDED = frozenset(
    {"clean_acc", "best_clean_acc", "target_class_acc", "asr", "robust_acc", "clean_train_acc", "poison_train_acc"}
)
# RAD and other unbounded metrics: the axis spans at least this much and always shows 0.
MIN_SPAN = 0.1
MARKERS = "osD^vP*Xph<>"
VANILLA_COLOR = "black"


def value_axis(ax: plt.Axes, values: Iterable[float], *, axis: str = "x", log: bool = True) -> None:
    """Ticks at exactly the swept values; log scale, or symlog when 0 is among them (σ = 0)."""
    vals = sorted({float(v) for v in values if np.isfinite(v)})
    if log and vals and vals[0] >= 0:
        positive = [v for v in vals if v > 0]
        if vals[0] == 0 and positive:
            # Linear between 0 and the smallest positive value, log above: 0 gets its own tick.
            getattr(ax, f"set_{axis}scale")("symlog", linthresh=positive[0], linscale=0.5)
        elif vals[0] > 0 and vals[-1] / vals[0] > 3:
            getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(vals))
    target.set_minor_locator(NullLocator())
    getattr(ax, f"set_{axis}ticks")(vals, [fmt(v) for v in vals])
    if vals:
        # 5% margins in the scale's own coordinates: symlog's automatic margin reaches far below 0.
        transform = target.get_transform()
        lo, hi = transform.transform([vals[0], vals[-1]])
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        getattr(ax, f"set_{axis}lim")(*transform.inverted().transform([lo - pad, hi + pad]))


def log_axis(ax: plt.Axes, *, axis: str = "y") -> None:
    """Log scale with plain-number labels (0.1, 1, 2, 5 …): decades, plus 2 and 5 under 2 decades, more under 1."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    subs = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0) if hi / lo < 10 else (1.0, 2.0, 5.0) if hi / lo < 100 else (1.0,)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_formatter(NullFormatter())


def evenly_spaced(values: Sequence[float]) -> bool:
    steps = np.diff(sorted(values))
    return len(steps) < 2 or bool(np.allclose(steps, steps[0], rtol=1e-6, atol=0))


def grid_axis(ax: plt.Axes, values: Iterable[float], *, percent: bool = False) -> tuple[dict[float, float], bool]:
    """x ticks at exactly the swept values; returns (value → x position, whether positions are evenly spaced).

    An evenly spaced grid keeps a linear axis. Any other (Hong's poison ratios 0, 1, …, 5, 10, …, 40 %) gets one
    evenly spaced position per value, so every value has room for its label; the caller says so on the axis.
    """
    vals = sorted({float(v) for v in values if np.isfinite(v)})
    categorical = not evenly_spaced(vals)
    pos = {v: float(i) if categorical else v for i, v in enumerate(vals)}
    ticks = list(pos.values())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(ticks, [pct(v) if percent else fmt(v) for v in vals])
    if categorical:
        ax.set_xlim(-0.5, len(vals) - 0.5)
    return pos, categorical


def panel_title(ax: plt.Axes, text: str, *, fontsize: float = 10, **kwargs: Any) -> None:
    """A panel title wrapped to the panel's width (≈ 13 characters per inch at 10 pt), never into its neighbour."""
    width = ax.get_position().width * ax.figure.get_figwidth()
    chars = max(20, int(width * 13 * 10 / fontsize))
    ax.set_title("\n".join(textwrap.fill(part, chars) for part in text.split("\n")), fontsize=fontsize, **kwargs)


def empty_panel(ax: plt.Axes, text: str) -> None:
    """A panel with nothing to draw says why, in grey, instead of showing an empty frame."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, textwrap.fill(text, 40), ha="center", va="center", fontsize=9, color="0.4",
            transform=ax.transAxes)  # fmt: skip


def dodge(index: int, count: int, width: float) -> float:
    """Offset of line ``index`` of ``count`` so that error bars at one x do not sit on each other."""
    return 0.0 if count < 2 else (index - (count - 1) / 2) * width / count


def metric_limits(ax: plt.Axes, metric: str, values: Iterable[float]) -> None:
    """[0, 1] for accuracies and ASR; for RAD and the rest a range that includes 0 and spans ≥ MIN_SPAN."""
    if metric in BOUNDED:
        ax.set_ylim(-0.04, 1.04)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1], ["0", "0.25", "0.5", "0.75", "1"])
        return
    vals = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if not len(vals):
        return
    lo, hi = min(0.0, float(vals.min())), max(0.0, float(vals.max()))
    span = max(hi - lo, MIN_SPAN)
    ax.set_ylim(lo - 0.05 * span, lo + 1.05 * span)


def line_colors(levels: Sequence[str], *, ordered: bool) -> dict[str, Any]:
    """Vanilla black; DP lines from a sequential palette when they differ in one ordered number, else qualitative."""
    dp = [lv for lv in levels if lv != VANILLA]
    if ordered:
        cmap = plt.get_cmap("viridis")  # cut before its pale yellow end, which is unreadable on white
        colors = [cmap(x) for x in (np.linspace(0, 0.85, len(dp)) if len(dp) > 1 else [0.35] * len(dp))]
    else:
        colors = sns.color_palette("tab10" if len(dp) <= 10 else "tab20", len(dp))
    out: dict[str, Any] = dict(zip(dp, colors, strict=True))
    if VANILLA in levels:
        out[VANILLA] = VANILLA_COLOR
    return out


def line_markers(levels: Sequence[str]) -> dict[str, str]:
    return {lv: MARKERS[i % len(MARKERS)] for i, lv in enumerate(levels)}


def outside_legend(fig: Figure, handles: list, *, title: str | None = None, bold: Sequence[str] = ()) -> None:
    """One legend right of the top-right panel, only when it tells something (two or more entries).

    Attached to that panel, not to the figure, so the layout keeps the suptitle above it.
    """
    if len(handles) < 2:
        return
    panels = [ax for ax in fig.axes if ax.axison and ax.get_label() != "<colorbar>"]
    top = max(ax.get_position().y1 for ax in panels)
    anchor = max((ax for ax in panels if ax.get_position().y1 >= top - 1e-6), key=lambda ax: ax.get_position().x1)
    legend = anchor.legend(handles=handles, title=title, loc="upper left", bbox_to_anchor=(1.02, 1.0),
                           frameon=False, fontsize=9)  # fmt: skip
    for text in legend.get_texts():
        if text.get_text() in bold:
            text.set_fontweight("bold")


def _rank(index: int, count: int, text: str) -> tuple[int, int]:
    # Keep the ends, then 0, then round numbers (1, 10 …), then 2 and 5 multiples, then the rest.
    if index in (0, count - 1):
        return (0, index)
    try:
        value = abs(float(text.replace("−", "-").rstrip("%")))
    except ValueError:
        return (3, index)
    if value == 0:
        return (0, index)
    mantissa = value / 10 ** math.floor(math.log10(value))
    return (1 if math.isclose(mantissa, 1) else 2 if any(math.isclose(mantissa, m) for m in (2, 5)) else 3, index)


def _declutter_axis(axis: Axis, index: int, renderer: Any, pad: float) -> None:
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(abs(lo), abs(hi), 1.0)
    labels = [
        t
        for t in axis.get_majorticklabels()
        if t.get_visible() and t.get_text() and lo - tol <= t.get_position()[index] <= hi + tol
    ]
    labels.sort(key=lambda t: t.get_position()[index])
    boxes = [t.get_window_extent(renderer).padded(pad) for t in labels]
    minor = [t.get_window_extent(renderer) for t in axis.get_minorticklabels() if t.get_visible() and t.get_text()]
    if minor and any(m.overlaps(b) for m in minor for b in [*boxes, *minor] if m is not b):
        axis.set_minor_formatter(NullFormatter())
    if not any(boxes[i].overlaps(boxes[i + 1]) for i in range(len(boxes) - 1)):
        return
    order = sorted(range(len(labels)), key=lambda i: _rank(i, len(labels), labels[i].get_text()))
    kept: list[int] = []
    for i in order:
        if not any(boxes[i].overlaps(boxes[j]) for j in kept):
            kept.append(i)
    locs = [t.get_position()[index] for t in labels]
    axis.set_ticks(locs, [t.get_text() if i in kept else "" for i, t in enumerate(labels)])


def declutter(fig: Figure, *, pad: float = 2.0) -> Figure:
    """Blank the tick labels that would overlap a neighbour (ends, 0 and round values are kept first)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        _declutter_axis(ax.xaxis, 0, renderer, pad)
        _declutter_axis(ax.yaxis, 1, renderer, pad)
    return fig
