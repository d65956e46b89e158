"""Forecasting the next interval's net energy from the meter's own per-interval history.

The agent must decide before a gate how much the house will import or export during the
interval after it, from nothing but what this meter measured. A household's load repeats
with the day (the evening peak, the PV noon) and drifts slowly within it (clouds, a kettle),
so the forecast blends two guesses:

    recent    = the mean net Wh of the last RECENT complete intervals before k that we have
    yesterday = the net Wh of interval k - intervals_per_day (the same time one day earlier)
    forecast  = (RECENT_WEIGHT·recent + YESTERDAY_WEIGHT·yesterday) / (sum of the weights)

with only the guess we have when the other is missing, and 0 (no trade) with neither.
Net Wh is import minus export: positive is a shortfall to buy, negative a surplus to sell.
Every division truncates toward zero, so a forecast never claims more energy, in either
direction, than the blend of what was measured: rounding never makes the agent oversell.

Pure: the history is data (`History`), `record` returns a new one, bounded to a day and
the recent window, so the running meter can keep it in memory or rebuild it from its store.
"""

from __future__ import annotations

from dataclasses import dataclass

RECENT = 3  # complete intervals averaged for the recent guess
RECENT_WEIGHT = 1
YESTERDAY_WEIGHT = 1
DAY_S = 86_400


@dataclass(frozen=True)
class History:
    """Net Wh (import - export) per complete interval, by interval number, oldest first."""

    net: tuple[tuple[int, int], ...] = ()


def intervals_per_day(interval_s: int) -> int:
    """Whole intervals in a day (at least 1): "yesterday" is this many intervals back."""
    return max(1, DAY_S // interval_s)


def record(history: History, k: int, net_wh: int, interval_s: int) -> History:
    """`history` with interval k's net Wh (replacing an earlier value for k), keeping only
    what a forecast of a later interval can still use: the last day and the recent window."""
    keep_from = k - intervals_per_day(interval_s) - RECENT
    rows = {kk: wh for kk, wh in history.net if kk >= keep_from}
    rows[k] = net_wh
    return History(tuple(sorted(rows.items())))


def forecast(history: History, k: int, interval_s: int) -> int:
    """The forecast net Wh of interval k from intervals strictly before k (see the module)."""
    rows = dict(history.net)
    recent = [rows[kk] for kk in range(k - RECENT, k) if kk in rows]
    yesterday = rows.get(k - intervals_per_day(interval_s))
    guesses: list[tuple[int, int, int]] = []  # (weight, sum, count)
    if recent:
        guesses.append((RECENT_WEIGHT, sum(recent), len(recent)))
    if yesterday is not None:
        guesses.append((YESTERDAY_WEIGHT, yesterday, 1))
    if not guesses:
        return 0
    # Σ w·(s/n) / Σ w over a common denominator, exactly, then one truncation toward zero.
    den = 1
    for _, _, n in guesses:
        den *= n
    numerator = sum(w * s * (den // n) for w, s, n in guesses)
    return _toward_zero(numerator, den * sum(w for w, _, _ in guesses))


def _toward_zero(a: int, b: int) -> int:
    q = abs(a) // b
    return q if a >= 0 else -q
