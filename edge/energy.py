"""Integrating power into energy with integers only (§1: no floats in energy or money).

Power is in W and time in ms, so energy accumulates exactly in W·ms; the Wh counters on
the wire are whole Wh derived from it, so rounding never loses or invents energy.
"""

from __future__ import annotations

from dataclasses import dataclass

WMS_PER_WH = 3_600_000  # 1 Wh = 3600 W·s = 3,600,000 W·ms


@dataclass(frozen=True, slots=True)
class Totals:
    """Cumulative energy in each direction, in W·ms; both only ever increase."""

    wms_in: int = 0
    wms_out: int = 0

    @property
    def wh_in(self) -> int:
        return self.wms_in // WMS_PER_WH

    @property
    def wh_out(self) -> int:
        return self.wms_out // WMS_PER_WH

    def add(self, w_in: int, w_out: int, dt_ms: int) -> Totals:
        """Energy after `dt_ms` of importing `w_in` and exporting `w_out`.

        The meter measures each direction on its own channel, so both flows are given and
        both are magnitudes; a negative one is a sign error upstream, not an export.
        """
        if w_in < 0 or w_out < 0:
            raise ValueError(f"power in each direction is never negative: {w_in} W in, {w_out} W out")
        if dt_ms < 0:
            raise ValueError("time runs forwards")
        return Totals(self.wms_in + w_in * dt_ms, self.wms_out + w_out * dt_ms)
