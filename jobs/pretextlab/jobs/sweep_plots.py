"""Small PNG charts for the sweep summary, drawn with Pillow (already a dependency; no matplotlib):
a scatter of the metric against one hyperparameter, and line charts of learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

W, H = 720, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 24, 44, 64
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
GREY, INK, GRID = "#888888", "#222222", "#e6e6e6"


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.0e}"
    return f"{v:.4g}"


def _span(values: Sequence[float], pad: float = 0.06) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if hi == lo:
        d = abs(lo) * 0.1 or 1.0
        return lo - d, hi + d
    d = (hi - lo) * pad
    return lo - d, hi + d


class _Axes:
    """A plot area mapping data to pixels (optionally log10 on x), with ticks and labels."""

    def __init__(
        self,
        title: str,
        xlabel: str,
        ylabel: str,
        xs: Sequence[float],
        ys: Sequence[float],
        log_x: bool = False,
        x_categories: Sequence[str] | None = None,
    ):
        self.img = Image.new("RGB", (W, H), "white")
        self.d = ImageDraw.Draw(self.img)
        self.log_x, self.cats = log_x, list(x_categories) if x_categories else None
        fx = [math.log10(x) for x in xs] if log_x else list(xs)
        self.x0, self.x1 = (-0.5, len(self.cats) - 0.5) if self.cats else _span(fx or [0.0])
        self.y0, self.y1 = _span(ys or [0.0])
        f, small = _font(16), _font(12)
        self.d.text((W // 2, 14), title, fill=INK, font=f, anchor="mt")
        self.d.text((LEFT + (W - LEFT - RIGHT) // 2, H - 18), xlabel, fill=INK, font=small, anchor="mb")
        ylab = Image.new("RGBA", (H, 18), (255, 255, 255, 0))
        ImageDraw.Draw(ylab).text((H // 2, 9), ylabel, fill=INK, font=small, anchor="mm")
        self.img.paste(ylab.rotate(90, expand=True), (4, 0), ylab.rotate(90, expand=True))
        for yv in _ticks(self.y0, self.y1):
            py = self.py(yv)
            self.d.line([(LEFT, py), (W - RIGHT, py)], fill=GRID)
            self.d.text((LEFT - 6, py), _fmt(yv), fill=INK, font=small, anchor="rm")
        if self.cats:
            for i, c in enumerate(self.cats):
                self.d.text((self.px(i), H - BOTTOM + 8), c[:18], fill=INK, font=small, anchor="mt")
        else:
            for xv in _ticks(self.x0, self.x1):
                px = self.px(xv, raw=True)
                self.d.line([(px, TOP), (px, H - BOTTOM)], fill=GRID)
                label = _fmt(10**xv) if log_x else _fmt(xv)
                self.d.text((px, H - BOTTOM + 8), label, fill=INK, font=small, anchor="mt")
        self.d.rectangle([LEFT, TOP, W - RIGHT, H - BOTTOM], outline=INK)

    def px(self, x: float, raw: bool = False) -> float:
        if self.log_x and not raw and not self.cats:
            x = math.log10(x)
        return LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)

    def py(self, y: float) -> float:
        return H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)

    def dot(self, x: float, y: float, color: str, r: int = 5, hollow: bool = False) -> None:
        px, py = self.px(x), self.py(y)
        box = [px - r, py - r, px + r, py + r]
        if hollow:
            self.d.ellipse(box, outline=color, width=2)
        else:
            self.d.ellipse(box, fill=color, outline=INK)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.img.save(path, format="PNG")
        return path


def scatter(
    path: str | Path,
    xs: Sequence[object],
    ys: Sequence[float],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    best: int | None = None,
    hollow: Sequence[bool] = (),
) -> Path:
    """Metric (y) of each trial against one hyperparameter (x). Non-numeric x values become categories;
    ``best`` is drawn larger in red, ``hollow`` marks trials stopped early."""
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    cats = None if numeric else sorted({str(x) for x in xs})
    pos: list[float] = (
        [x for x in xs if isinstance(x, (int, float))] if cats is None else [cats.index(str(x)) for x in xs]
    )  # numeric: every x is an int or float (so the filter keeps them all)
    ax = _Axes(title, xlabel, ylabel, pos, ys, log_x=log_x and numeric and min(pos) > 0, x_categories=cats)
    for i, (x, y) in enumerate(zip(pos, ys)):
        if i != best:
            ax.dot(x, y, PALETTE[0], hollow=bool(hollow[i]) if i < len(hollow) else False)
    if best is not None:
        ax.dot(pos[best], ys[best], PALETTE[1], r=8)
    return ax.save(path)


def lines(
    path: str | Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """One polyline with markers per labelled series, legend top-left inside the plot."""
    xs = [x for sx, _ in series.values() for x in sx]
    ys = [y for _, sy in series.values() for y in sy]
    ax = _Axes(title, xlabel, ylabel, xs or [0.0], ys or [0.0])
    small = _font(12)
    for i, (label, (sx, sy)) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        pts = [(ax.px(x), ax.py(y)) for x, y in zip(sx, sy)]
        if len(pts) > 1:
            ax.d.line(pts, fill=color, width=2)
        for x, y in zip(sx, sy):
            ax.dot(x, y, color, r=3)
        ly = TOP + 10 + 16 * i
        ax.d.line([(LEFT + 10, ly), (LEFT + 30, ly)], fill=color, width=3)
        ax.d.text((LEFT + 36, ly), label, fill=INK, font=small, anchor="lm")
    return ax.save(path)
