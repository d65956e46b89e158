"""The street of `spb-deploy demo --day`: six households, their day of power, their policies.

Pure data and arithmetic, so the demo, its tests and the README's plot agree on one street:
three houses with rooftop PV following a solar bell curve, two households whose use peaks
in the evening, one with a small wind turbine. Each household's net power over the day
(+ import, - export) becomes the fake ADC's schedule (edge.sampling.PowerProfile), one
step per trading interval, and its policy is what it would set once in `spb-meter policy`.

The day is compressed: N intervals of a few seconds stand for 24 hours, so a real half hour
(N = 48) passes in one interval. The schedule's power is the real power times the compression
(86,400 s / (N · interval_s)), which makes each interval's Wh those of the real half hour:
a 5 kW roof at noon exports about 2.5 kWh per interval, as it would in 30 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from edge.policy import Policy

DAY_S = 86_400


@dataclass(frozen=True)
class Household:
    """One home of the street: its meter, what it is, its load and generation in real W."""

    meter: str
    kind: str
    source: str  # what it sells on the market ("" for none: it only buys)
    base_w: int  # always-on load
    morning_w: int  # the breakfast peak, around 07:30
    evening_w: int  # the evening peak, around 19:00
    pv_w: int = 0  # rooftop PV's peak at 13:00 (solar noon in summer time)
    wind_w: int = 0  # a small turbine's mean output
    policy: Policy = field(default_factory=Policy)  # reserve_w in real W: scaled like the day's power


def _auto(sell: int, buy: int, **more) -> Policy:
    return Policy(mode="auto", sell_min_price=sell, buy_max_price=buy, max_spend_per_day=BUDGET_PER_DAY, **more)


BUDGET_PER_DAY = 500_000  # units: no household here runs out (the table shows what they spent)
TARIFF = 7  # units per Wh: the flat grid tariff in the street's genesis, the bills' yardstick
OPENING_UNITS = 1_000_000  # each household's balance in the genesis

STREET = (
    Household("m0001", "rooftop PV 5 kW", "solar", 350, 600, 1200, pv_w=5000, policy=_auto(3, 6, reserve_w=300)),
    Household("m0002", "rooftop PV 4 kW", "solar", 300, 500, 1000, pv_w=4000, policy=_auto(2, 6, reserve_w=200)),
    Household(
        "m0003",
        "rooftop PV 3 kW",
        "solar",
        400,
        800,
        1500,
        pv_w=3000,
        policy=_auto(4, 5, reserve_w=200, green_only=True),
    ),
    Household("m0004", "evening peak", "", 400, 700, 2800, policy=_auto(0, 6)),
    Household("m0005", "evening peak", "", 500, 500, 2200, policy=_auto(0, 5, green_only=True)),
    Household("m0006", "small wind", "wind", 450, 400, 1200, wind_w=1200, policy=_auto(2, 6, reserve_w=200)),
)


def hour_of(i: int, intervals: int) -> float:
    """The hour of the day at the middle of interval i of `intervals`."""
    return (i + 0.5) * 24 / intervals


def label(i: int, intervals: int) -> str:
    """HH:MM at the start of interval i: how the report and the plot name it."""
    minutes = i * 24 * 60 // intervals
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _bump(h: float, centre: float, width: float) -> float:
    return math.exp(-(((h - centre) / width) ** 2))


def solar_w(peak_w: int, h: float) -> float:
    """A clear day's PV: a bell around 13:00, nothing before 05:30 or after 20:30."""
    return 0.0 if not 5.5 < h < 20.5 else peak_w * _bump(h, 13.0, 3.0)


def wind_w(mean_w: int, h: float) -> float:
    """A gusty but repeatable day of wind: two slow waves around the mean, never negative."""
    return max(0.0, mean_w * (1 + 0.5 * math.sin(2 * math.pi * h / 9 + 1) + 0.25 * math.sin(2 * math.pi * h / 3.7)))


def net_w(home: Household, h: float) -> int:
    """Real W at hour h: load minus generation (+ import, - export), whole W."""
    load = home.base_w + home.morning_w * _bump(h, 7.5, 1.0) + home.evening_w * _bump(h, 19.0, 1.6)
    return round(load - solar_w(home.pv_w, h) - wind_w(home.wind_w, h))


def compression(intervals: int, interval_s: int) -> int:
    """How many times faster than real time the compressed day runs (whole: W stay integers)."""
    return DAY_S // (intervals * interval_s)


def schedule(home: Household, intervals: int, interval_s: int) -> list[int]:
    """The fake ADC's W in each interval of the day, then one more: midnight again, held after."""
    speed = compression(intervals, interval_s)
    return [net_w(home, hour_of(i % intervals, intervals)) * speed for i in range(intervals + 1)]


def profile_text(home: Household, intervals: int, interval_s: int) -> str:
    """`--fake-profile` for the household: one step per interval from the day's start."""
    return ",".join(f"{i * interval_s}:{w}" for i, w in enumerate(schedule(home, intervals, interval_s)))


def full_scale_w(home: Household, intervals: int, interval_s: int) -> int:
    """The pots' full scale for the schedule, with a quarter to spare (config.toml's *_full_w)."""
    return max(1, max(abs(w) for w in schedule(home, intervals, interval_s))) * 5 // 4
