"""Charts as SVG text: line and point series on real axes, with no plotting library.

A report is written at the end of every training run, so its charts must come from the
required packages alone; SVG is text, scales with the page, and a browser draws it sharply.
Every chart has nice tick steps (1, 2, 2.5, 5 × 10^k), a grid, axis labels, and a legend
below the plot area, never over the data. A series that spans orders of magnitude (a VAE's
KL early in training) is drawn on a log axis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
LOG_RATIO = 100.0  # positive values whose max/min reach this are drawn on a log axis
FONT = "font-family='system-ui, sans-serif' font-size='11'"
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 26, 40  # margins around the plot area: tick labels, title, x label
LEGEND_ROW = 16
MAX_POINTS = 800  # per drawn line: more than a chart's width in pixels adds bytes, not detail
CHAR_WIDTH = 6.5  # px of an 11 px sans-serif character, generously: legend entries are laid out by it


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]
    colour: str
    faint: bool = False  # the raw values behind a smoothed line
    points: bool = False  # markers at each value (few, separate measurements such as eval results)


def nice_step(span: float, target: int = 5) -> float:
    """The 1, 2, 2.5 or 5 × 10^k step that cuts `span` into about `target` intervals."""
    raw = span / max(target, 1)
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def linear_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    step = nice_step(hi - lo, target)
    first = math.ceil(lo / step - 1e-9)
    return [round(k * step, 12) for k in range(first, math.floor(hi / step + 1e-9) + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten between lo and hi (with 2 and 5 between them when there are few decades)."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    mantissas = (1, 2, 5) if len(decades) <= 3 else (1,)
    return [m * 10.0**d for d in decades for m in mantissas if lo * (1 - 1e-9) <= m * 10.0**d <= hi * (1 + 1e-9)]


def tick_label(value: float, step: float | None) -> str:
    """Enough decimals to tell neighbouring ticks apart, no more; exponents for extremes."""
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.3g}"
    if step is None:
        return f"{value:g}"
    decimals = len(f"{step:.6f}".rstrip("0").partition(".")[2])  # 0.25 -> 2, 2.5 -> 1, 200 -> 0
    return f"{value:.{decimals}f}"


def ema(values: list[float], weight: float) -> list[float]:
    """Exponential moving average, debiased as TensorBoard's smoothing (the first values are not pulled to 0)."""
    out, acc, norm = [], 0.0, 0.0
    for v in values:
        acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(acc / norm)
    return out


def smoothing_weight(n: int) -> float:
    """About n/20 points under the average's span: raw noise shows, the trend reads; no smoothing below 40 points."""
    span = n // 20
    return 1 - 2 / (span + 1) if span > 1 else 0.0


def _domain(values: list[float], log: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        return 10 ** math.floor(math.log10(lo) + 1e-9), 10 ** math.ceil(math.log10(hi) - 1e-9)
    if hi == lo:
        pad = abs(lo) * 0.1 or 1.0
        return lo - pad, hi + pad
    step = nice_step(hi - lo)
    return math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step


def chart(series: list[Series], title: str, x_label: str, y_label: str, width: int = 440, height: int = 280,
          log_y: bool | None = None) -> str:
    """One SVG chart; `log_y` None picks a log axis when positive values span LOG_RATIO or more."""
    finite = [(x, y) for s in series for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y)]
    legend = legend_layout([s for s in series if s.name], LEFT, width - RIGHT)
    total_height = height + 6 + (max((row for *_, row in legend), default=-1) + 1) * LEGEND_ROW
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{total_height}' "
             f"viewBox='0 0 {width} {total_height}' role='img' {FONT}>",
             f"<title>{escape(title)}</title><rect width='100%' height='100%' fill='white'/>",
             f"<text x='{width / 2}' y='16' text-anchor='middle' font-size='13' font-weight='600'>{escape(title)}</text>"]
    x0, x1, y0, y1 = LEFT, width - RIGHT, TOP, height - BOTTOM
    if not finite:
        parts.append(f"<text x='{width / 2}' y='{height / 2}' text-anchor='middle' fill='#666'>no finite values</text></svg>")
        return "".join(parts)
    ys = [y for _, y in finite]
    log = (min(ys) > 0 and max(ys) / min(ys) >= LOG_RATIO) if log_y is None else log_y and min(ys) > 0
    xlo, xhi = _domain([x for x, _ in finite], log=False)
    ylo, yhi = _domain(ys, log)
    fy = (lambda v: math.log10(v)) if log else (lambda v: v)

    def px(x: float) -> float:
        return x0 + (x - xlo) / (xhi - xlo) * (x1 - x0)

    def py(y: float) -> float:
        return y1 - (fy(y) - fy(ylo)) / (fy(yhi) - fy(ylo)) * (y1 - y0)

    xticks = linear_ticks(xlo, xhi, 5)
    yticks = log_ticks(ylo, yhi) if log else linear_ticks(ylo, yhi, 5)
    ystep = None if log else nice_step(yhi - ylo)
    for t in yticks:
        parts.append(f"<line x1='{x0}' x2='{x1}' y1='{py(t):.1f}' y2='{py(t):.1f}' stroke='#e4e4e4'/>"
                     f"<text x='{x0 - 5}' y='{py(t) + 4:.1f}' text-anchor='end'>{tick_label(t, ystep)}</text>")
    for t in xticks:
        parts.append(f"<line x1='{px(t):.1f}' x2='{px(t):.1f}' y1='{y0}' y2='{y1}' stroke='#e4e4e4'/>"
                     f"<text x='{px(t):.1f}' y='{y1 + 15}' text-anchor='middle'>{tick_label(t, nice_step(xhi - xlo))}</text>")
    parts.append(f"<rect x='{x0}' y='{y0}' width='{x1 - x0}' height='{y1 - y0}' fill='none' stroke='#888'/>")
    parts.append(f"<text x='{(x0 + x1) / 2}' y='{y1 + 32}' text-anchor='middle'>{escape(x_label)}</text>")
    axis = escape(y_label + (" (log scale)" if log else ""))
    parts.append(f"<text transform='translate(14 {(y0 + y1) / 2}) rotate(-90)' text-anchor='middle'>{axis}</text>")
    for s in series:
        pts = [(px(x), py(y)) for x, y in zip(s.xs, s.ys) if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log)]
        opacity = 0.35 if s.faint else 1.0
        if len(pts) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(f"<polyline points='{path}' fill='none' stroke='{s.colour}' stroke-opacity='{opacity}' "
                         f"stroke-width='{1 if s.faint else 1.8}' stroke-linejoin='round'/>")
        if s.points or len(pts) == 1:
            parts += [f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3' fill='{s.colour}' fill-opacity='{opacity}'/>" for x, y in pts]
    for s, lx, row in legend:  # below the x label: outside the plot area, so it covers no data
        ly = height + 10 + row * LEGEND_ROW
        parts.append(f"<rect x='{lx}' y='{ly - 8}' width='14' height='{3 if not s.points else 8}' fill='{s.colour}' "
                     f"fill-opacity='{0.35 if s.faint else 1}'/><text x='{lx + 19}' y='{ly}'>{escape(s.name)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def legend_layout(series: list[Series], left: float, right: float) -> list[tuple[Series, float, int]]:
    """(series, x, row) of each legend entry: side by side, wrapping to a new row where one would not fit."""
    out, x, row = [], left, 0
    for s in series:
        width = 19 + CHAR_WIDTH * len(s.name) + 14
        if x > left and x + width > right:
            x, row = left, row + 1
        out.append((s, x, row))
        x += width
    return out


def loss_panels(rows: list[dict], keys: list[str]) -> list[str]:
    """One chart per loss key against step: each term on its own scale (a KL of 3 beside a
    reconstruction of 300 would be a flat line on a shared axis), the raw values faint behind
    their moving average when there are enough of them to smooth."""
    panels = []
    for i, key in enumerate(keys):
        points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        xs, ys = [float(p[0]) for p in points], [float(p[1]) for p in points]
        colour = PALETTE[i % len(PALETTE)]
        weight = smoothing_weight(len(ys))
        stride = math.ceil(len(xs) / MAX_POINTS) or 1  # thinned after smoothing, so the average still sees every value
        if weight:
            series = [Series(f"{key} (raw)", xs[::stride], ys[::stride], colour, faint=True),
                      Series(f"{key} (moving average {weight:.2f})", xs[::stride], ema(ys, weight)[::stride], colour)]
        else:
            series = [Series(key, xs, ys, colour)]
        panels.append(chart(series, key, "step", key, width=380))
    return panels


def side_by_side(panels: list[str], per_row: int = 2, gap: int = 12) -> str:
    """Several SVG charts as one SVG file (loss.svg), `per_row` to a row."""
    sizes = [(_attr(p, "width"), _attr(p, "height")) for p in panels]
    if not sizes:
        return "<svg xmlns='http://www.w3.org/2000/svg' width='0' height='0'/>"
    cell_w, cell_h = max(w for w, _ in sizes), max(h for _, h in sizes)
    rows = math.ceil(len(panels) / per_row)
    width, height = min(len(panels), per_row) * (cell_w + gap) - gap, rows * (cell_h + gap) - gap
    body = "".join(p.replace("<svg ", f"<svg x='{(i % per_row) * (cell_w + gap)}' y='{(i // per_row) * (cell_h + gap)}' ", 1)
                   for i, p in enumerate(panels))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' viewBox='0 0 {width} {height}'>"
            f"<rect width='100%' height='100%' fill='white'/>{body}</svg>")


def _attr(svg: str, name: str) -> int:
    """A size attribute of a chart's outer <svg> element (which `chart` writes)."""
    start = svg.index(f" {name}='") + len(name) + 3
    return int(svg[start : svg.index("'", start)])
