"""The end-of-day report of `spb-deploy demo --day`: the household table's figures, the bills,
and the plot as a PNG with matplotlib or as a hand-written SVG without it."""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from deploy.day_report import (
    TITLE,
    HouseholdRow,
    IntervalRow,
    day_table,
    flat_bill,
    hour_ticks,
    market_bill,
    renewable_share,
    totals,
    write_plot,
)
from deploy.day_svg import nice_top

SVG = "{http://www.w3.org/2000/svg}"
TARIFF = 5
PV = HouseholdRow("m0001", "rooftop PV", 400, 2600, 150, 1800, 450, 5400, 0, 0, 30)
PEAK = HouseholdRow("m0004", "evening peak", 3100, 0, 1700, 0, 5900, 0, 1200, 2, 25)
WIND = HouseholdRow("m0006", "wind", 0, 900, 0, 600, 0, 1800, 0, 0, 10)


def _cells(households: list[HouseholdRow], tariff: int = TARIFF) -> dict[str, list[str]]:
    """The rendered table's body rows by their first cell, as a person reads them."""
    console = Console(record=True, width=200)
    console.print(day_table(households, tariff))
    rows = {}
    for line in console.export_text().splitlines():
        cells = [c.strip() for c in line.strip("│").split("│")]
        if line.startswith("│") and len(cells) == 11 and cells[0] != "meter":
            rows[cells[0]] = cells[1:]
    return rows


def _day(n: int) -> list[IntervalRow]:
    """`n` intervals of half an hour; the open product fills nothing in the first, the green one only at noon."""
    return [
        IntervalRow(
            k=1000 + i,
            label=f"{i // 2:02d}:{30 * (i % 2):02d}",
            supply_wh=10 * i,
            demand_wh=300 - i,
            traded_wh=min(10 * i, 300 - i),
            price=None if i == 0 else 2 + i % 3,
            green_price=4 if 20 <= i < 28 else None,
        )
        for i in range(n)
    ]


def test_the_table_shows_each_households_figures_bills_and_saving():
    rows = _cells([PV, PEAK, WIND])
    # meter: kind, imported, bought, sold, paid, received, share, flat, market, saving
    assert rows["m0001"] == ["rooftop PV", "400", "150", "1800", "450", "5400", "0.0%", "2000", "-3700", "5700"]
    assert rows["m0004"] == ["evening peak", "3100", "1700", "0", "5900", "0", "38.7%", "15500", "12900", "2600"]
    assert rows["m0006"] == ["wind", "0", "0", "600", "0", "1800", "–", "0", "-1800", "1800"]


def test_the_totals_row_sums_every_column_and_its_share_is_of_the_summed_import():
    rows = _cells([PV, PEAK, WIND])
    assert rows["total"] == ["", "3500", "1850", "2400", "6350", "7200", "34.3%", "17500", "7400", "10100"]
    whole = totals([PV, PEAK, WIND])
    assert (whole.exported_wh, whole.green_wh, whole.refunded, whole.settled) == (3500, 1200, 2, 65)


def test_the_caption_counts_the_fills_and_says_export_is_paid_nothing():
    console = Console(record=True, width=200)
    console.print(day_table([PV, PEAK], TARIFF))
    text = " ".join(console.export_text().split())
    assert "55 settled, 2 refunded" in text
    assert "flat tariff 5 units per Wh" in text and "export to the grid is paid nothing" in text


def test_an_empty_street_has_only_a_totals_row_of_zeros():
    assert _cells([]) == {"total": ["", "0", "0", "0", "0", "0", "–", "0", "0", "0"]}


@pytest.mark.parametrize(
    "green, imported, shown",
    [
        (0, 0, "–"),  # no import: no share, not 0 %
        (5, 0, "–"),
        (0, 7, "0.0%"),
        (7, 7, "100.0%"),
        (1, 3, "33.3%"),
        (2, 3, "66.7%"),
        (3745, 10000, "37.5%"),  # half up in integers: a float would round 37.45 down
        (1, 2000, "0.1%"),  # 0.05 % rounds up
        (1, 2001, "0.0%"),
    ],
)
def test_the_renewable_share_has_one_decimal_rounded_half_up(green, imported, shown):
    row = HouseholdRow("m", "k", imported, 0, green, 0, 0, 0, green, 0, 0)
    assert renewable_share(row) == shown


def test_the_bills_compare_all_import_at_the_tariff_with_the_market_plus_the_rest_at_the_tariff():
    assert flat_bill(PEAK, 5) == 3100 * 5
    assert market_bill(PEAK, 5) == 5900 + (3100 - 1700) * 5
    assert market_bill(PV, 5) == 450 - 5400 + 250 * 5  # sales lower the bill below zero
    assert flat_bill(WIND, 5) == 0 and market_bill(WIND, 5) == -1800  # its export to the grid earns nothing
    expensive = HouseholdRow("m", "k", 100, 0, 100, 0, 700, 0, 0, 0, 1)  # bought at 7 against a tariff of 5
    assert flat_bill(expensive, 5) - market_bill(expensive, 5) == -200
    assert _cells([expensive])["m"][-1] == "-200"


def test_hour_labels_are_thinned_to_at_most_twelve_starting_with_the_first():
    day = _day(48)
    ticks = hour_ticks(day)
    assert [label for _, label in ticks] == [f"{h:02d}:00" for h in range(0, 24, 2)]
    assert [i for i, _ in hour_ticks(_day(5))] == [0, 1, 2, 3, 4]
    assert len(hour_ticks(_day(49))) <= 12 and hour_ticks([]) == []


@pytest.mark.parametrize(
    "value, top, step", [(0, 1, 1), (1, 1, 1), (5, 5, 1), (6, 6, 2), (11, 15, 5), (101, 150, 50), (320, 400, 100)]
)
def test_an_axis_ends_on_a_round_number_at_or_above_the_largest_value(value, top, step):
    assert nice_top(value) == (top, step)


def _svg(tmp_path: Path, rows: list[IntervalRow]) -> ET.Element:
    path = write_plot(rows, tmp_path / "day", force_svg=True)
    assert path == tmp_path / "day.svg" and not (tmp_path / "day.png").exists()
    return ET.parse(path).getroot()


def _marks(root: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in root.iter() if e.get("class") == name]


def test_the_svg_has_one_mark_per_interval_for_each_series_and_the_hour_labels(tmp_path):
    day = _day(48)
    root = _svg(tmp_path, day)
    assert root.tag == f"{SVG}svg" and root.findtext(f"{SVG}title") == TITLE
    assert len(_marks(root, "traded")) == len(_marks(root, "supply")) == len(_marks(root, "demand")) == 48
    assert len(_marks(root, "price")) == 47  # nothing cleared in the first interval: no mark, not a 0
    assert len(_marks(root, "green-price")) == 8
    assert [t.text for t in _marks(root, "tick")] == [f"{h:02d}:00" for h in range(0, 24, 2)]
    hovers = [e.findtext(f"{SVG}title") for e in _marks(root, "demand")]
    assert hovers[13] == "06:30: demand (bids) 287 Wh"
    assert _marks(root, "traded")[30].findtext(f"{SVG}title") == "15:00: traded 270 Wh"
    assert _marks(root, "green-price")[0].findtext(f"{SVG}title") == "10:00: green price 4 units per Wh"


def test_a_price_line_breaks_where_its_product_filled_nothing(tmp_path):
    day = _day(6)
    day[3] = IntervalRow(1003, "01:30", 5, 5, 0, None, None)
    root = _svg(tmp_path, day)
    assert len(_marks(root, "price-line")) == 2  # intervals 1-2 and 4-5; none for interval 0
    assert len(_marks(root, "supply-line")) == 1 and len(_marks(root, "green-price-line")) == 0


def test_the_svg_is_self_contained_and_bars_stand_on_the_axis_in_proportion(tmp_path):
    day = [IntervalRow(1, "00:00", 100, 100, 100, 3, None), IntervalRow(2, "00:30", 100, 100, 50, 3, None)]
    root = _svg(tmp_path, day)
    text = (tmp_path / "day.svg").read_text()
    assert "href" not in text and "<script" not in text and "url(" not in text
    full, half = (float(bar.get("height", "")) for bar in _marks(root, "traded"))
    assert full == pytest.approx(2 * half) and full > 0
    bottoms = {round(float(bar.get("y", "")) + float(bar.get("height", "")), 1) for bar in _marks(root, "traded")}
    assert len(bottoms) == 1


def test_an_empty_day_still_writes_a_valid_svg(tmp_path):
    root = _svg(tmp_path, [])
    assert _marks(root, "traded") == [] and root.findtext(f"{SVG}title") == TITLE


def test_without_matplotlib_the_plot_is_an_svg(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    path = write_plot(_day(4), tmp_path / "day")
    assert path == tmp_path / "day.svg"
    ET.parse(path)
    assert not (tmp_path / "day.png").exists()


def test_a_dot_in_the_name_is_kept_not_taken_for_a_suffix(tmp_path):
    assert write_plot(_day(2), tmp_path / "day.v1", force_svg=True) == tmp_path / "day.v1.svg"


def test_with_matplotlib_the_plot_is_a_png_of_ten_by_five_inches(tmp_path):
    pytest.importorskip("matplotlib", reason="the `plot` extra is not installed: the PNG cannot be drawn")
    path = write_plot(_day(48), tmp_path / "day")
    assert path == tmp_path / "day.png" and not (tmp_path / "day.svg").exists()
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 500)
    assert 20_000 < len(data) < 500_000  # drawn, not blank, and small enough for the README


def test_a_day_where_nothing_cleared_still_draws_a_png(tmp_path):
    """No price at all and every Wh zero: no axis without range, no warning (warnings are errors here)."""
    pytest.importorskip("matplotlib", reason="the `plot` extra is not installed: the PNG cannot be drawn")
    quiet = [IntervalRow(i, f"{i:02d}:00", 0, 0, 0, None, None) for i in range(24)]
    for name, rows in (("quiet", quiet), ("empty", [])):
        assert write_plot(rows, tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
