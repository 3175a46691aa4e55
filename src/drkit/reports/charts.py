"""Small inline SVG charts for the HTML/PDF report: values over time against an objective.

Hand-drawn SVG (a few dozen lines) rather than a plotting library: the report must be one
self-contained file with no scripts and no network, and WeasyPrint renders SVG directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from html import escape

from drkit.units import human_duration

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 14, 28
MAX_POINTS = 400
COLOURS = {"passed": "#1a7f37", "succeeded": "#1a7f37", "breached": "#b35900",
           "failed": "#cf222e", "interrupted": "#cf222e", "checks_too_weak": "#cf222e"}


def _downsample(points: list[tuple[datetime, float, str]]) -> list[tuple[datetime, float, str]]:
    """At most MAX_POINTS, keeping the highest value of each bucket (peaks are what matter)."""
    if len(points) <= MAX_POINTS:
        return points
    size = len(points) / MAX_POINTS
    out = []
    for bucket in range(MAX_POINTS):
        chunk = points[int(bucket * size):int((bucket + 1) * size)]
        if chunk:
            out.append(max(chunk, key=lambda p: p[1]))
    return out


def time_chart(title: str, points: list[tuple[datetime, float, str]], *, since: datetime,
               until: datetime, objective: float | None, label: str,
               fmt: Callable[[float], str] = human_duration,
               objective_label: str = "objective",
               trend: tuple[tuple[datetime, float], tuple[datetime, float]] | None = None
               ) -> str:
    """An SVG line-and-dot chart of ``points`` (time, value, status) over [since, until],
    with the objective as a dashed line and ``trend`` (a forecast) as a dotted one; values
    are written with ``fmt`` (default: durations). Empty ``points`` draw an explicit "no
    data" chart."""
    points = _downsample(sorted(points))
    top_value = max([p[1] for p in points] + [objective or 0.0, 1.0]
                    + ([trend[0][1], trend[1][1]] if trend else [])) * 1.1
    span = max((until - since).total_seconds(), 1.0)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(at: datetime) -> float:
        return LEFT + plot_w * min(max((at - since).total_seconds() / span, 0.0), 1.0)

    def y(value: float) -> float:
        return TOP + plot_h * (1 - value / top_value)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}">',
             f"<title>{escape(title)}</title>",
             f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafbfc" '
             'stroke="#d0d7de"/>']
    for fraction in (0.0, 0.5, 1.0):
        value = top_value / 1.1 * fraction
        parts.append(f'<text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
                     f'font-size="10">{escape(fmt(value))}</text>')
    for at, anchor in ((since, "start"), (until, "end")):
        parts.append(f'<text x="{x(at):.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}" '
                     f'font-size="10">{at:%Y-%m-%d %H:%M}</text>')
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle" '
                 f'font-size="10" fill="#57606a">{escape(label)}</text>')
    if objective is not None:
        parts.append(f'<line class="objective" x1="{LEFT}" x2="{LEFT + plot_w}" '
                     f'y1="{y(objective):.1f}" y2="{y(objective):.1f}" stroke="#cf222e" '
                     'stroke-dasharray="6 4"/>')
        parts.append(f'<text x="{LEFT + plot_w - 4}" y="{y(objective) - 4:.1f}" '
                     f'text-anchor="end" font-size="10" fill="#cf222e">{objective_label} '
                     f'{escape(fmt(objective))}</text>')
    if trend is not None:
        (t0, v0), (t1, v1) = trend
        parts.append(f'<line class="trend" x1="{x(t0):.1f}" x2="{x(t1):.1f}" '
                     f'y1="{y(v0):.1f}" y2="{y(v1):.1f}" stroke="#8250df" '
                     'stroke-dasharray="2 3"/>')
    if not points:
        parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle" font-size="12" fill="#57606a">no data in the '
                     'period</text>')
    else:
        path = " ".join(f"{x(at):.1f},{y(v):.1f}" for at, v, _ in points)
        parts.append(f'<polyline class="series" points="{path}" fill="none" stroke="#0969da" '
                     'stroke-width="1.5"/>')
        for at, value, status in points:
            parts.append(f'<circle cx="{x(at):.1f}" cy="{y(value):.1f}" r="2.5" '
                         f'fill="{COLOURS.get(status, "#0969da")}"/>')
    parts.append("</svg>")
    return "".join(parts)
