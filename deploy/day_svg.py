"""The street's day as an SVG written by hand, for a machine without matplotlib.

The demo must produce its plot on a fresh `make demo` that did not install the `plot` extra,
so this draws the same series as the PNG (deploy/day_report.py) with nothing but strings:
no fonts, images or scripts from outside, only `sans-serif`. Every interval's value is one
mark with a class naming its series (`supply`, `demand`, `traded`, `price`, `green-price`)
and a `<title>` a browser shows on hover, so the picture can be read and tested exactly.
Coordinates are floats: they place pixels, they never count energy or money.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from deploy.day_report import IntervalRow

WIDTH, HEIGHT = 1000, 500
LEFT, RIGHT, TOP, BOTTOM = 80, 920, 60, 390  # the plot area, in pixels
# (class, legend, colour (Okabe-Ito: told apart with colour blindness too), dashed); the PNG uses them too
TRADED = ("traded", "traded", "#56b4e9", False)
LINES = (
    ("supply", "supply (asks)", "#e69f00", False),
    ("demand", "demand (bids)", "#0072b2", False),
    ("price", "open price", "#222222", False),
    ("green-price", "green price", "#009e73", True),
)
DASH = ' stroke-dasharray="6 3"'


def nice_top(value: int, most_ticks: int = 5) -> tuple[int, int]:
    """(top, step): an axis from 0 to `top` in at most `most_ticks` steps of 1, 2 or 5 × 10ⁿ, top ≥ value."""
    step = 1
    while step * most_ticks < value:
        step = step * 5 // 2 if str(step)[0] == "2" else step * 2  # 1, 2, 5, 10, 20, 50, ...
    return max(step, -(-value // step) * step), step


def line_values(rows: Sequence[IntervalRow]) -> dict[str, list[int | None]]:
    """Each line of LINES, by class, per interval: None where a product filled nothing."""
    return {
        "supply": [r.supply_wh for r in rows],
        "demand": [r.demand_wh for r in rows],
        "price": [r.price for r in rows],
        "green-price": [r.green_price for r in rows],
    }


def svg_document(rows: Sequence[IntervalRow], ticks: Sequence[tuple[int, str]], title: str) -> str:
    """The whole SVG: bars of traded Wh, lines of supply and demand (Wh, left axis) and the
    clearing prices (units per Wh, right axis), one slot per interval, `ticks` (index, label) under x."""
    slot = (RIGHT - LEFT) / max(len(rows), 1)
    energy_top, energy_step = nice_top(max([max(r.supply_wh, r.demand_wh, r.traded_wh) for r in rows] or [0]))
    prices = [p for r in rows for p in (r.price, r.green_price) if p is not None]
    price_top, price_step = nice_top(-(-6 * max(prices or [0]) // 5))  # headroom: a flat price off the frame

    def x(i: int) -> float:
        return LEFT + (i + 0.5) * slot

    def y(value: int, top: int) -> float:
        return BOTTOM - value * (BOTTOM - TOP) / top

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        'font-family="sans-serif" font-size="12">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{WIDTH / 2}" y="30" text-anchor="middle" font-size="17">{escape(title)}</text>',
    ]
    out += _y_axis(energy_top, energy_step, LEFT, "energy per interval (Wh)")
    out += _y_axis(price_top, price_step, RIGHT, "clearing price (units per Wh)")
    out.append(f'<path d="M{LEFT},{TOP}V{BOTTOM}H{RIGHT}V{TOP}" fill="none" stroke="#888"/>')
    for i, label in ticks:
        out.append(f'<line x1="{x(i):.1f}" y1="{BOTTOM}" x2="{x(i):.1f}" y2="{BOTTOM + 5}" stroke="#888"/>')
        out.append(f'<text class="tick" x="{x(i):.1f}" y="{BOTTOM + 19}" text-anchor="middle">{escape(label)}</text>')
    out.append(f'<text x="{WIDTH / 2}" y="{BOTTOM + 40}" text-anchor="middle">hour of the compressed day</text>')
    for i, r in enumerate(rows):
        bar = BOTTOM - y(r.traded_wh, energy_top)
        out.append(
            f'<rect class="traded" x="{x(i) - slot * 0.3:.1f}" y="{BOTTOM - bar:.1f}" width="{slot * 0.6:.1f}" '
            f'height="{bar:.1f}" fill="{TRADED[2]}" fill-opacity="0.7">'
            f"<title>{escape(r.label)}: traded {r.traded_wh} Wh</title></rect>"
        )
    values = line_values(rows)
    for name, legend, colour, dashed in LINES:
        top, unit = (energy_top, "Wh") if name in ("supply", "demand") else (price_top, "units per Wh")
        stroke = f'stroke="{colour}" stroke-width="2"' + (DASH if dashed else "")
        for run in _runs(values[name]):
            if name in ("supply", "demand"):
                points = " ".join(f"{x(i):.1f},{y(v, top):.1f}" for i, v in run)
            else:  # a price holds for its whole interval: steps, not slopes
                points = " ".join(f"{x(i) + d:.1f},{y(v, top):.1f}" for i, v in run for d in (-slot / 2, slot / 2))
            out.append(f'<polyline class="{name}-line" points="{points}" fill="none" {stroke}/>')
        for run in _runs(values[name]):
            for i, v in run:
                out.append(
                    f'<circle class="{name}" cx="{x(i):.1f}" cy="{y(v, top):.1f}" r="3" fill="{colour}">'
                    f"<title>{escape(f'{rows[i].label}: {legend} {v} {unit}')}</title></circle>"
                )
    out += _legend()
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _y_axis(top: int, step: int, at: int, caption: str) -> list[str]:
    """Tick labels from 0 to `top` outside the plot at x `at`, light grid lines for the left axis
    only (two grids would cross), and the axis's caption turned 90°."""
    out = []
    side = -1 if at == LEFT else 1
    anchor = "end" if at == LEFT else "start"
    for value in range(0, top + 1, step):
        ty = BOTTOM - value * (BOTTOM - TOP) / top
        if at == LEFT:
            out.append(f'<line class="grid" x1="{LEFT}" y1="{ty:.1f}" x2="{RIGHT}" y2="{ty:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{at + 8 * side}" y="{ty + 4:.1f}" text-anchor="{anchor}">{value}</text>')
    cx, cy = at + 55 * side, (TOP + BOTTOM) / 2
    out.append(
        f'<text x="{cx}" y="{cy}" text-anchor="middle" transform="rotate(-90 {cx} {cy})">{escape(caption)}</text>'
    )
    return out


def _legend() -> list[str]:
    """One row of swatches and names under the plot, where it covers no data."""
    out = ['<g class="legend">']
    items = (LINES[0], LINES[1], TRADED, LINES[2], LINES[3])
    left = (WIDTH - 170 * len(items)) // 2
    for n, (name, legend, colour, dashed) in enumerate(items):
        lx, ly = left + 170 * n, HEIGHT - 35
        if name == "traded":
            out.append(f'<rect x="{lx}" y="{ly - 6}" width="24" height="12" fill="{colour}" fill-opacity="0.7"/>')
        else:
            dash = DASH if dashed else ""
            out.append(f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{lx + 30}" y="{ly + 4}">{escape(legend)}</text>')
    out.append("</g>")
    return out


def _runs(values: Sequence[int | None]) -> list[list[tuple[int, int]]]:
    """The stretches of consecutive defined values: a price line breaks where nothing cleared."""
    runs: list[list[tuple[int, int]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            runs.append([])
        else:
            runs[-1].append((i, v))
    return [run for run in runs if run]
