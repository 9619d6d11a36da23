"""Tiny inline-SVG charts for the HTML report: no JavaScript, no external files, no plotting library."""

from __future__ import annotations

import math
from html import escape

from vllm_fleet.bench.metrics import percentile

W, H = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 62, 16, 30, 42
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")


def _nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if value <= step * magnitude * (1 + 1e-9))


def _count_max(value: float) -> float:
    """An axis top for counts: a nice maximum that is a multiple of the 4 tick intervals (integer ticks)."""
    return float(4 * math.ceil(_nice_max(value) / 4))


def _frame(title: str, x_label: str, y_label: str, x_max: float, y_max: float) -> list[str]:
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="system-ui,sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="600">{escape(title)}</text>',
    ]
    for i in range(5):
        y = TOP + plot_h - plot_h * i / 4
        x = LEFT + plot_w * i / 4
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="#e5e7eb"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_fmt(y_max * i / 4)}</text>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_fmt(x_max * i / 4)}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{H - 6}" text-anchor="middle">{escape(x_label)}</text>')
    parts.append(
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" transform="rotate(-90 14 {TOP + plot_h / 2})">'
        f"{escape(y_label)}</text>"
    )
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#9ca3af"/>')
    return parts


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 10000:
        return f"{value / 1000:.3g}k"
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _scale(x_max: float, y_max: float):
    plot_w, plot_h = W - LEFT - RIGHT, H - TOP - BOTTOM

    def point(x: float, y: float) -> tuple[float, float]:
        return LEFT + plot_w * min(x / x_max, 1.0), TOP + plot_h - plot_h * min(y / y_max, 1.0)

    return point


def histogram(title: str, unit: str, values: list[float], bins: int = 30) -> str:
    """Bars of how many samples fell in each bin, with p50 and p99 marked."""
    if not values:
        return _empty(title)
    ordered = sorted(values)
    top = ordered[min(len(ordered) - 1, int(len(ordered) * 0.995))] or ordered[-1] or 1.0
    x_max = _nice_max(top)
    counts = [0] * bins
    for v in ordered:
        counts[min(int(v / x_max * bins), bins - 1)] += 1
    y_max = _count_max(max(counts))
    parts = _frame(title, unit, "requests" if "ITL" not in title else "tokens", x_max, y_max)
    point = _scale(x_max, y_max)
    bar_w = (W - LEFT - RIGHT) / bins
    for i, count in enumerate(counts):
        x, y = point(i * x_max / bins, count)
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 1:.1f}" height="{H - BOTTOM - y:.1f}" '
            f'fill="{COLORS[0]}" opacity="0.8"/>'
        )
    for q, color in ((50, COLORS[2]), (99, COLORS[1])):
        v = percentile(ordered, q)  # the table's own definition, so marker and table agree
        x, _ = point(v, 0)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{H - BOTTOM}" stroke="{color}" stroke-dasharray="4 3"/>'
        )
        right = x > W - RIGHT - 70  # near the right edge: label on the left of the line
        anchor, dx = ("end", -3) if right else ("start", 3)
        parts.append(
            f'<text x="{x + dx:.1f}" y="{TOP + 12 + (14 if q == 99 else 0)}" text-anchor="{anchor}" fill="{color}">'
            f"p{q} {_fmt(v)}</text>"
        )
    return "".join([*parts, "</svg>"])


def lines(
    title: str,
    x_label: str,
    y_label: str,
    series: dict[str, list[tuple[float, float]]],
    limit: tuple[str, float] | None = None,
    counts: bool = False,
) -> str:
    """Line chart of named series; ``limit`` draws a horizontal line (the SLO); ``counts``: integer y ticks."""
    points = [xy for values in series.values() for xy in values]
    if not points:
        return _empty(title)
    x_max = _nice_max(max(x for x, _ in points))
    y_top = max([y for _, y in points] + ([limit[1] * 1.1] if limit else []))
    y_max = _count_max(y_top) if counts else _nice_max(y_top)
    parts = _frame(title, x_label, y_label, x_max, y_max)
    point = _scale(x_max, y_max)
    for i, (name, values) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in (point(a, b) for a, b in values))
        parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(values) < 30:
            parts.extend(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>' for x, y in (point(a, b) for a, b in values)
            )
        parts.append(f'<text x="{LEFT + 6}" y="{TOP + 14 + 14 * i}" fill="{color}">{escape(name)}</text>')
    if limit:
        _, y = point(0, limit[1])
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{W - RIGHT}" y2="{y:.1f}" stroke="{COLORS[1]}" '
            'stroke-dasharray="6 4"/>'
        )
        parts.append(f'<text x="{LEFT + 4}" y="{y - 4:.1f}" fill="{COLORS[1]}">{escape(limit[0])}</text>')
    return "".join([*parts, "</svg>"])


def _empty(title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="60" font-family="system-ui,sans-serif">'
        f'<text x="{LEFT}" y="18" font-size="13" font-weight="600">{escape(title)}</text>'
        f'<text x="{LEFT}" y="44" font-size="11" fill="#6b7280">no data</text></svg>'
    )
