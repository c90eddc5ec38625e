"""Charts as inline SVG geometry, computed here so templates only draw what they are given.

No chart library: a line chart (training curves, telemetry) and a bar chart (label statistics)
are a few polylines and rectangles. Long series are thinned to at most ``MAX_POINTS`` per line
(keeping each bucket's first point and the last point), so a job with 5,000 scalar points
renders as fast as one with 500 and the SVG stays small.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_POINTS = 400
COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563"]


@dataclass
class Line:
    name: str
    color: str
    points: str  # "x,y x,y ..." in SVG coordinates
    last: float


@dataclass
class LineChart:
    title: str
    width: int
    height: int
    lines: list[Line] = field(default_factory=list)
    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)
    pad: int = 36


@dataclass
class Bar:
    name: str
    value: int
    x: float
    y: float
    w: float
    h: float


@dataclass
class BarChart:
    width: int
    height: int
    bars: list[Bar]
    max_value: int


def thin(
    points: Sequence[tuple[float, float]], limit: int = MAX_POINTS
) -> list[tuple[float, float]]:
    if len(points) <= limit:
        return list(points)
    step = len(points) / (limit - 1)
    kept = [points[int(i * step)] for i in range(limit - 1)]
    kept.append(points[-1])
    return kept


def line_chart(
    title: str,
    series: dict[str, Sequence[tuple[float, float]]],
    width: int = 520,
    height: int = 220,
) -> LineChart:
    chart = LineChart(title, width, height)
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    if not xs:
        return chart
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    chart.x_range, chart.y_range = (x0, x1), (y0, y1)
    pad = chart.pad
    iw, ih = width - 2 * pad, height - 2 * pad
    for i, (name, pts) in enumerate(sorted(series.items())):
        if not pts:
            continue
        coords = " ".join(
            f"{pad + (x - x0) / (x1 - x0) * iw:.1f},{pad + ih - (y - y0) / (y1 - y0) * ih:.1f}"
            for x, y in thin(pts)
        )
        chart.lines.append(Line(name, COLORS[i % len(COLORS)], coords, pts[-1][1]))
    return chart


def bar_chart(values: Sequence[tuple[str, int]], width: int = 520, bar_h: int = 18) -> BarChart:
    """Horizontal bars, one per label (names are drawn left of the bars)."""
    top = max((v for _, v in values), default=0) or 1
    label_w, gap = 140, 4
    inner = width - label_w - 50
    bars = [
        Bar(name, v, label_w, i * (bar_h + gap), inner * v / top, bar_h)
        for i, (name, v) in enumerate(values)
    ]
    return BarChart(width, max(1, len(values)) * (bar_h + gap), bars, top)
