"""What optbench's plots share: a look per optimizer that tells many apart (colour, line
style and marker together, so lines stay distinct past ten optimizers and in grey print),
text readable on a coloured cell, point labels that do not overlap, and the atomic save."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox  # noqa: E402

from optbench.files import atomic_write  # noqa: E402

LINE_STYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "*"]
PALETTE = plt.get_cmap("tab10")  # ten colours a reader tells apart; tab20's pairs are not


def styles(names: list[str]) -> dict[str, dict]:
    """Each name's colour, line style and marker: ten colours, then the same colours
    dashed, dash-dotted, dotted; every name up to 40 gets its own (colour, style) pair, and
    each of ten consecutive names its own marker."""
    return {
        name: {
            "color": PALETTE(i % 10),
            "linestyle": LINE_STYLES[(i // 10) % len(LINE_STYLES)],
            "marker": MARKERS[(i + i // 10) % len(MARKERS)],
        }
        for i, name in enumerate(names)
    }


def colors(names: list[str]) -> dict[str, tuple]:
    return {name: style["color"] for name, style in styles(names).items()}


def save(fig: plt.Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def luminance(rgb) -> float:
    """The relative luminance of an sRGB colour (WCAG 2.1): 0 for black, 1 for white."""
    channels = np.asarray(rgb[:3], dtype=float)
    linear = np.where(channels <= 0.04045, channels / 12.92, ((channels + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast(first, second) -> float:
    """The WCAG contrast ratio of two colours, from 1 (the same) to 21 (black on white)."""
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def text_color_on(background) -> str:
    """Black or white, whichever contrasts more with the background."""
    white, black = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    return "white" if contrast(white, background) > contrast(black, background) else "black"


def label_points(ax, xs, ys, names: list[str], fontsize: int = 8) -> list:
    """Write each point's name beside it, moved up or down by whole lines (with a thin
    line back to its point) to the nearest place inside the axes where it covers no point
    and no label placed before it; returns the annotations. Call it once the axes' limits and the
    figure's layout are final: placement is measured on the drawn figure."""
    points = [(x, y, n) for x, y, n in zip(xs, ys, names, strict=True) if np.isfinite([x, y]).all()]
    xs, ys, names = zip(*points, strict=True) if points else ((), (), ())  # NaN: not drawn
    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    shifts = [0.0] + [sign * k * fontsize * 1.2 for k in range(1, 40) for sign in (1, -1)]
    radius = 4 * ax.figure.dpi / 72  # a marker of s=50 is about 7 points across
    centres = ax.transData.transform(np.column_stack([xs, ys]).reshape(-1, 2))
    markers = [Bbox.from_extents(*(c - radius), *(c + radius)) for c in centres]
    placed, boxes = [], list(markers)  # a label covers neither a point nor another label
    for x, y, name in sorted(zip(xs, ys, names, strict=True), key=lambda p: (p[1], p[0])):
        for shift in shifts:
            label = ax.annotate(
                name,
                (x, y),
                xytext=(6, shift - 3),
                textcoords="offset points",
                fontsize=fontsize,
                annotation_clip=False,
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"} if shift else None,
            )
            label.update_positions(renderer)
            box = Text.get_window_extent(label, renderer)  # the text, not its line
            free = not any(box.overlaps(other) for other in boxes)
            if free and inside.y0 <= box.y0 and box.y1 <= inside.y1 or shift == shifts[-1]:
                break
            label.remove()
        placed.append(label)
        boxes.append(box)
    return placed


def room_for_labels(ax, values: np.ndarray, log: bool) -> None:
    """x limits that keep every point off the edges, with room on the right for the labels
    written beside the points."""
    if log:
        ax.set_xscale("log")
        low, high = np.log10(values.min()), np.log10(values.max())
        span = max(high - low, 0.3)
        ax.set_xlim(10 ** (low - 0.08 * span), 10 ** (high + 0.3 * span))
    else:
        span = max(values.max() - values.min(), 1.0)
        ax.set_xlim(values.min() - 0.08 * span, values.max() + 0.3 * span)
