"""Time charts as inline SVG text (sans-I/O, no plotting library, nothing fetched).

A `TimeChart` maps UTC milliseconds and a value range onto a fixed-size plot area; each
drawing method adds elements with the class `data` (what a test counts to know a plot is
drawn) and a `<title>` where a hover should explain a mark. Long series are reduced to one
mean/min/max per pixel column (`envelope`) so a week of 10-second readings stays small.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from html import escape

import numpy as np

WIDTH = 960
HEIGHT = 230
LEFT, RIGHT, TOP, BOTTOM = 84, 16, 14, 34
COLUMNS = 480                       # envelope columns across the plot area
_TIME_STEPS_MS = [10_000, 30_000] + [m * 60_000 for m in (
    1, 2, 5, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080, 20160, 43200)]


@dataclass(frozen=True)
class Envelope:
    t_ms: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    breaks: np.ndarray              # bool: a line must not join this column to the previous


def envelope(t_ms: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
             t0: int, t1: int, max_gap_ms: int, columns: int = COLUMNS) -> Envelope:
    """Per pixel column the mean of the means and the extreme lo/hi; a column is joined to
    the previous one only if no more than `max_gap_ms` passed between their readings."""
    keep = (t_ms >= t0) & (t_ms < t1) & np.isfinite(mean)
    t, m, a, b = t_ms[keep], mean[keep], lo[keep], hi[keep]
    if t.size == 0:
        z = np.zeros(0)
        return Envelope(np.zeros(0, np.int64), z, z, z, np.zeros(0, bool))
    col = ((t - t0) * columns // max(1, t1 - t0)).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
    ends = np.r_[starts[1:], t.size]
    mid = np.array([int(t[s:e].mean()) for s, e in zip(starts, ends, strict=True)], np.int64)
    means = np.add.reduceat(m, starts) / (ends - starts)
    los = np.minimum.reduceat(a, starts)
    his = np.maximum.reduceat(b, starts)
    first, last = t[starts], t[ends - 1]
    breaks = np.r_[True, first[1:] - last[:-1] > max_gap_ms]
    return Envelope(mid, means, los, his, breaks)


def nice_range(values: list[float], pad: float = 0.05, floor: float | None = None,
               min_span: float = 1.0) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (0.0, 1.0)
    lo, hi = min(finite), max(finite)
    if hi - lo < min_span:
        centre = (hi + lo) / 2
        lo, hi = centre - min_span / 2, centre + min_span / 2
    span = hi - lo
    lo, hi = lo - span * pad, hi + span * pad
    if floor is not None:
        lo = max(lo, floor)
    return lo, hi


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / target
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return factor * power
    return 10 * power


def _fmt(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick step needs (0.25 → 2)."""
    decimals = next((d for d in range(5) if abs(round(step, d) - step) < 1e-9 * step), 4)
    return f"{value:.{decimals}f}"


@dataclass
class TimeChart:
    plot_id: str
    t0: int
    t1: int
    y0: float
    y1: float
    y_label: str
    parts: list[str] = field(default_factory=list)
    legend: list[tuple[str, str]] = field(default_factory=list)   # (css class, text)
    categories: list[str] | None = None     # row labels (row i spans y i..i+1) for a timeline

    # -- coordinates ---------------------------------------------------------------
    def x(self, t_ms: float) -> float:
        return LEFT + (t_ms - self.t0) / max(1, self.t1 - self.t0) * (WIDTH - LEFT - RIGHT)

    def y(self, value: float) -> float:
        value = min(max(value, self.y0), self.y1)
        return TOP + (self.y1 - value) / (self.y1 - self.y0) * (HEIGHT - TOP - BOTTOM)

    # -- marks ---------------------------------------------------------------------
    def line(self, env: Envelope, css: str, legend: str) -> None:
        """The envelope's means as polylines, broken where the data is."""
        segments: list[list[str]] = []
        for t, v, brk in zip(env.t_ms.tolist(), env.mean.tolist(), env.breaks.tolist(),
                             strict=True):
            if brk or not segments:
                segments.append([])
            segments[-1].append(f"{self.x(t):.1f},{self.y(v):.1f}")
        for seg in segments:
            if len(seg) == 1:       # a lone reading: a dot, so it is seen
                cx, cy = seg[0].split(",")
                self.parts.append(f'<circle class="data {css}" cx="{cx}" cy="{cy}" r="1.8"/>')
            else:
                self.parts.append(f'<polyline class="data {css}" points="{" ".join(seg)}"/>')
        if segments:
            self.legend.append((css, legend))

    def band(self, env: Envelope, css: str, legend: str) -> None:
        """The envelope's min..max as a shaded area per joined segment."""
        start = 0
        idx = np.flatnonzero(env.breaks).tolist() + [len(env.t_ms)]
        drawn = False
        for end in idx[1:]:
            if end - start > 1 and np.any(env.hi[start:end] > env.lo[start:end]):
                upper = [f"{self.x(t):.1f},{self.y(v):.1f}"
                         for t, v in zip(env.t_ms[start:end], env.hi[start:end], strict=True)]
                lower = [f"{self.x(t):.1f},{self.y(v):.1f}"
                         for t, v in zip(env.t_ms[start:end], env.lo[start:end], strict=True)]
                self.parts.append(f'<polygon class="data {css}" points="'
                                  f'{" ".join(upper + lower[::-1])}"/>')
                drawn = True
            start = end
        if drawn:
            self.legend.append((css, legend))

    def markers(self, t_ms: np.ndarray, values: np.ndarray, css: str, legend: str,
                title: str) -> None:
        """One marker per pixel column holding any of the given readings."""
        if t_ms.size == 0:
            return
        col = ((t_ms - self.t0) * COLUMNS // max(1, self.t1 - self.t0)).astype(np.int64)
        firsts = np.flatnonzero(np.r_[True, col[1:] != col[:-1]])
        for i in firsts.tolist():
            t, v = int(t_ms[i]), float(values[i])
            self.parts.append(
                f'<circle class="data {css}" cx="{self.x(t):.1f}" cy="{self.y(v):.1f}" r="3">'
                f"<title>{escape(title.format(time=utc_text(t), value=v))}</title></circle>")
        self.legend.append((css, legend))

    def bar(self, t_from: int, t_to: int, value: float, css: str, title: str) -> None:
        """A bar over [t_from, t_to), cut to the plotted time range."""
        x0, x1 = self.x(max(t_from, self.t0)), self.x(min(t_to, self.t1))
        top, base = self.y(value), self.y(max(self.y0, 0.0))
        self.parts.append(
            f'<rect class="data {css}" x="{x0:.1f}" y="{top:.1f}" width="{max(x1 - x0, 1):.1f}"'
            f' height="{max(base - top, 0.5):.1f}"><title>{escape(title)}</title></rect>')

    def span(self, t_from: int, t_to: int, css: str, title: str,
             rows: tuple[float, float] | None = None) -> None:
        """A shaded stretch of time across the plot height, or across rows (lo, hi)."""
        x0, x1 = self.x(max(t_from, self.t0)), self.x(min(t_to, self.t1))
        top, bottom = (TOP, HEIGHT - BOTTOM) if rows is None else (self.y(rows[1]),
                                                                   self.y(rows[0]))
        self.parts.append(
            f'<rect class="data {css}" x="{x0:.1f}" y="{top:.1f}" width="{max(x1 - x0, 1.5):.1f}"'
            f' height="{bottom - top:.1f}"><title>{escape(title)}</title></rect>')

    def hline(self, value: float, css: str, label: str, *, left: bool = False) -> None:
        """A reference line, labelled at the right end (or the left)."""
        if not self.y0 <= value <= self.y1:
            return
        y = self.y(value)
        x, anchor = (LEFT + 4, "start") if left else (WIDTH - RIGHT - 4, "end")
        self.parts.append(f'<line class="ref {css}" x1="{LEFT}" x2="{WIDTH - RIGHT}"'
                          f' y1="{y:.1f}" y2="{y:.1f}"/>'
                          f'<text class="ref-label" x="{x}" y="{y - 3:.1f}"'
                          f' text-anchor="{anchor}">{escape(label)}</text>')

    def note(self, text: str) -> None:
        self.parts.append(f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}"'
                          f' text-anchor="middle">{escape(text)}</text>')

    # -- output ----------------------------------------------------------------------
    def render(self, title: str) -> str:
        axes = self._axes()
        legend = "".join(f'<span class="key"><i class="sw {escape(css)}"></i>{escape(text)}'
                         "</span>" for css, text in self.legend)
        return (f'<figure class="chart" id="{escape(self.plot_id)}">'
                f"<figcaption>{escape(title)}</figcaption>"
                f'<svg class="plot" data-plot="{escape(self.plot_id)}" viewBox="0 0 {WIDTH}'
                f' {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img"'
                f' aria-label="{escape(title)}">{axes}{"".join(self.parts)}</svg>'
                f'<div class="legend">{legend}</div></figure>')

    def _axes(self) -> str:
        out = [f'<rect class="frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}"'
               f' height="{HEIGHT - TOP - BOTTOM}"/>']
        for row, name in enumerate(self.categories or []):
            y = self.y(row + 0.5)
            out.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}"'
                       f' text-anchor="end">{escape(name)}</text>')
        step = _nice_step(self.y1 - self.y0)
        v = math.ceil(self.y0 / step) * step
        while self.categories is None and v <= self.y1 + 1e-9:
            y = self.y(v)
            out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}"'
                       f' y2="{y:.1f}"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}"'
                       f' text-anchor="end">{_fmt(v, step)}</text>')
            v += step
        span = self.t1 - self.t0
        t_step = next((s for s in _TIME_STEPS_MS if span / s <= 8), _TIME_STEPS_MS[-1])
        t = self.t0 - self.t0 % t_step + (t_step if self.t0 % t_step else 0)
        while t < self.t1 - (self.t1 - self.t0) // 40:   # no label cut at the right edge
            x = self.x(t)
            label = time.strftime("%m-%d" if t_step >= 86_400_000 else "%H:%M:%S"
                                  if t_step < 60_000 else "%H:%M", time.gmtime(t / 1000))
            if t_step < 86_400_000 and t % 86_400_000 == 0:
                label = time.strftime("%m-%d 00:00", time.gmtime(t / 1000))
            out.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}"'
                       f' y2="{HEIGHT - BOTTOM}"/><text class="tick" x="{x:.1f}"'
                       f' y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{label}</text>')
            t += t_step
        mid = (TOP + HEIGHT - BOTTOM) / 2
        out.append(f'<text class="axis-label" x="14" y="{mid:.1f}" text-anchor="middle"'
                   f' transform="rotate(-90 14 {mid:.1f})">{escape(self.y_label)}</text>')
        return "".join(out)


def utc_text(t_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_ms / 1000))
