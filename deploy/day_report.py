"""The end of `spb-deploy demo --day`: what each household did on the market, and the day as a plot.

Pure: deploy/day.py runs the street and collects these rows from the ledger and the bus; this
module only turns them into a rich table (per household: the market's Wh and money, the
renewable share of its import, its bill with and without the market) and a plot per
interval (community supply and demand, traded Wh, clearing prices). Figures are integers,
as everywhere in the project (docs/HACKING.md); the share is computed in integers too, so
37.45 % is never shown as 37.4 % by a float's rounding.

The plot is a PNG when matplotlib (the `plot` extra) is installed and an SVG written by hand
(deploy/day_svg.py) otherwise: a newcomer's first `make demo` gets a picture either way, and
the demo does not pay matplotlib's import time before it needs it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from rich.table import Table
from rich.text import Text

from deploy.day_svg import LINES, TRADED, line_values, svg_document

TITLE = "A street's day: supply, demand, traded energy and clearing price"
MOST_LABELS = 12  # hour labels under the x axis: 48 half-hours would overlap


@dataclass(frozen=True)
class IntervalRow:
    """One market interval of the day, summed over the whole street."""

    k: int  # the interval number
    label: str  # the hour of the compressed day it stands for, "06:00"
    supply_wh: int  # the asks' Wh
    demand_wh: int  # the bids' Wh, revealed sealed bids included
    traded_wh: int  # the fills' Wh
    price: int | None  # the open product's clearing price in units per Wh; None if it filled nothing
    green_price: int | None  # the same for the green product


@dataclass(frozen=True)
class HouseholdRow:
    """One household's day: its meter's measurements and its fills on the ledger."""

    meter: str
    kind: str  # "rooftop PV", "evening peak", "wind"
    imported_wh: int  # measured by its meter over the day
    exported_wh: int
    bought_wh: int  # Wh of its fills that settled, as buyer
    sold_wh: int  # ... as seller
    paid: int  # units of its settled fills, as buyer
    received: int  # ... as seller
    green_wh: int  # of the bought Wh, those from renewable sellers
    refunded: int  # its fills as buyer that ended refunded (the energy did not arrive)
    settled: int  # its fills, either side, settled


def renewable_share(row: HouseholdRow) -> str:
    """green_wh / imported_wh as a percentage with one decimal, rounded half up; "–" without import.

    Import bought from the grid counts as not renewable: the grid's mix is unknown to the ledger."""
    if row.imported_wh <= 0:
        return "–"
    tenths = (2000 * row.green_wh + row.imported_wh) // (2 * row.imported_wh)  # ‰, half up
    return f"{tenths // 10}.{tenths % 10}%"


def flat_bill(row: HouseholdRow, tariff: int) -> int:
    """What the household would pay buying all its import from the grid at a flat `tariff` (units
    per Wh, a genesis parameter). Export is paid nothing here, as in market_bill, so the two compare."""
    return row.imported_wh * tariff


def market_bill(row: HouseholdRow, tariff: int) -> int:
    """What it paid with the market: its market purchases, minus its market sales, plus the rest
    of its import from the grid at the flat tariff. Export not sold on the market earns nothing
    (no feed-in tariff in this comparison); the bought Wh were confirmed from its own import, so
    they are at most imported_wh."""
    return row.paid - row.received + (row.imported_wh - row.bought_wh) * tariff


def totals(households: Sequence[HouseholdRow]) -> HouseholdRow:
    """The street as one household: every figure summed, so its bills are the sums of the bills."""
    sums = {
        f.name: sum(getattr(h, f.name) for h in households)
        for f in fields(HouseholdRow)
        if f.name not in ("meter", "kind")
    }
    return HouseholdRow(meter="total", kind="", **sums)


def day_table(households: Sequence[HouseholdRow], tariff: int) -> Table:
    """One row per household and a totals row; the caption says how the bills are counted."""
    whole = totals(households)
    table = Table(
        title="The street's day, per household",
        caption=(
            f"flat tariff {tariff} units per Wh for all import; with the market: paid − received + the rest of "
            f"the import at the tariff; export to the grid is paid nothing in either. Fills: {whole.settled} "
            f"settled, {whole.refunded} refunded to their buyers (energy that did not arrive)."
        ),
    )
    table.add_column("meter")
    table.add_column("kind")
    for column in ("imported Wh", "bought Wh", "sold Wh", "paid", "received", "renewable share of import"):
        table.add_column(column, justify="right")
    for column in ("flat-tariff bill", "bill with the market", "saving"):
        table.add_column(column, justify="right")
    for n, row in enumerate([*households, whole]):
        flat, with_market = flat_bill(row, tariff), market_bill(row, tariff)
        saving = flat - with_market
        table.add_row(
            row.meter,
            row.kind,
            str(row.imported_wh),
            str(row.bought_wh),
            str(row.sold_wh),
            str(row.paid),
            str(row.received),
            renewable_share(row),
            str(flat),
            str(with_market),
            Text(str(saving), style="green" if saving > 0 else "red" if saving < 0 else ""),
            end_section=n == len(households) - 1,
            style="bold" if row is whole else None,
        )
    return table


def hour_ticks(rows: Sequence[IntervalRow], most: int = MOST_LABELS) -> list[tuple[int, str]]:
    """(index, label) of every n-th interval, the first included, so at most `most` labels show."""
    step = max(1, math.ceil(len(rows) / most))
    return [(i, rows[i].label) for i in range(0, len(rows), step)]


def write_plot(rows: Sequence[IntervalRow], path_without_suffix: Path, *, force_svg: bool = False) -> Path:
    """Write `<path>.png` with matplotlib if it imports (and not `force_svg`), else `<path>.svg`; return the path."""
    if not force_svg:
        try:
            import matplotlib  # noqa: F401  (the optional `plot` extra: only its presence is asked)
        except ImportError:
            pass
        else:
            png = path_without_suffix.with_name(path_without_suffix.name + ".png")
            _write_png(rows, png)
            return png
    svg = path_without_suffix.with_name(path_without_suffix.name + ".svg")
    svg.write_text(svg_document(rows, hour_ticks(rows), TITLE), encoding="utf-8")
    return svg


def _write_png(rows: Sequence[IntervalRow], png: Path) -> None:
    """Traded Wh as bars, supply and demand as lines (left axis), prices on the right axis; the
    legend under the plot so it covers no data. The Agg canvas of an object-oriented Figure: no
    display, no pyplot state shared with anything else in the process."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    xs = list(range(len(rows)))
    fig = Figure(figsize=(10, 5), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.08, right=0.91, top=0.9, bottom=0.21)
    energy = fig.add_subplot()
    prices = energy.twinx()
    _, legend, colour, _ = TRADED
    energy.bar(xs, [r.traded_wh for r in rows], width=0.6, color=colour, alpha=0.7, label=legend)
    values = line_values(rows)
    for name, legend, colour, dashed in LINES:
        axis = energy if name in ("supply", "demand") else prices
        ys = [math.nan if v is None else float(v) for v in values[name]]  # a gap where nothing cleared
        steps = "default" if axis is energy else "steps-mid"  # a price holds for its whole interval
        axis.plot(
            xs, ys, color=colour, ls="--" if dashed else "-", lw=2, marker="o", ms=3, label=legend, drawstyle=steps
        )
    ticks = hour_ticks(rows)
    energy.set_xticks([i for i, _ in ticks], [label for _, label in ticks])
    energy.set_xlim(-0.7, max(len(rows), 1) - 0.3)
    energy.set_xlabel("hour of the compressed day")
    energy.set_ylabel("energy per interval (Wh)")
    prices.set_ylabel("clearing price (units per Wh)")
    top_price = max([p for r in rows for p in (r.price, r.green_price) if p is not None] or [1])
    prices.set_ylim(0, top_price * 1.2)  # headroom: a flat price off the frame
    energy.set_ylim(bottom=0)
    for axis in (energy, prices):
        axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        axis.spines["top"].set_visible(False)
    energy.grid(True, color="#e6e6e6", lw=0.8)
    energy.set_axisbelow(True)
    handles, labels = energy.get_legend_handles_labels()
    more, more_labels = prices.get_legend_handles_labels()
    fig.legend(handles + more, labels + more_labels, loc="lower center", ncol=5, frameon=False)
    fig.suptitle(TITLE, fontsize=14)
    fig.savefig(png, format="png")
