"""From ADC readings to energy: calibration, integration and the fake ADC's power schedule.

Pure: the caller owns the clock and the ADC, so every step here is exact and testable
without sleeping. Power leaves this module as whole W and energy as W·ms (§1: no floats in
energy or money); the only floats are the ADC's own 0..1 readings.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from edge.energy import Totals

Sense = Callable[[int], tuple[int, int]]
"""sense(ms since start) -> (W imported, W exported) now: what the meter loop samples."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """How one pot's ADC reading (0..1 of Vref) maps to whole W: linear up to full scale."""

    full_scale_w: int
    dead_band_w: int

    def __post_init__(self):
        if self.full_scale_w <= 0:
            raise ValueError(f"full scale must be positive, not {self.full_scale_w} W")
        if not 0 <= self.dead_band_w <= self.full_scale_w:
            raise ValueError(f"dead band must be within 0..{self.full_scale_w} W, not {self.dead_band_w} W")

    def watts(self, value: float) -> int:
        """The W a reading stands for; a pot resting near zero reads noise, hence the dead band.

        The MCP3008 never reads exactly 0: gpiozero maps code 0 to 1/2047, so the dead band
        (not the rounding) is what keeps an idle meter from counting energy.
        """
        w = min(max(round(value * self.full_scale_w), 0), self.full_scale_w)
        return 0 if w < self.dead_band_w else w

    def value_for(self, w: int) -> float:
        """The reading that stands for `w`: watts(value_for(w)) == w outside the dead band.

        A W inside the dead band (0 < w < dead_band_w) reads 0, as the real pot would.
        """
        if not 0 <= w <= self.full_scale_w:
            raise ValueError(f"{w} W is outside the pot's range 0..{self.full_scale_w} W")
        return w / self.full_scale_w


class Integrator:
    """Sampled power into energy by a left Riemann sum: each sample's power holds until the next.

    The clock is the caller's monotonic ms. A gap over `max_gap_ms` (a stalled or suspended
    loop) is integrated for `max_gap_ms` only: a stale reading must not invent energy. The
    time left out is counted in `unsampled_ms`.
    """

    def __init__(self, totals: Totals, max_gap_ms: int):
        if max_gap_ms <= 0:
            raise ValueError(f"max_gap_ms must be positive, not {max_gap_ms}")
        self.totals = totals
        self.max_gap_ms = max_gap_ms
        self.unsampled_ms = 0
        self._held: tuple[int, int, int] | None = None  # (t_ms, w_in, w_out) of the last sample

    def sample(self, w_in: int, w_out: int, t_ms: int) -> Totals:
        """Integrate the held power up to `t_ms`, then hold this sample's; the first only starts."""
        if w_in < 0 or w_out < 0:
            raise ValueError(f"power in each direction is never negative: {w_in} W in, {w_out} W out")
        if self._held is not None:
            t0, held_in, held_out = self._held
            if t_ms < t0:
                raise ValueError(f"time went backwards: {t_ms} ms after {t0} ms")
            dt_ms = min(t_ms - t0, self.max_gap_ms)
            self.unsampled_ms += t_ms - t0 - dt_ms
            self.totals = self.totals.add(held_in, held_out, dt_ms)
        self._held = (t_ms, w_in, w_out)
        return self.totals


_PROFILE_SYNTAX = "W, or S:W,S:W,... (W from S seconds after start; +W import, -W export)"


@dataclass(frozen=True, slots=True)
class PowerProfile:
    """The fake ADC's schedule: piecewise-constant W by time since start; the last step holds forever."""

    steps: tuple[tuple[int, int], ...]  # (start_s, W), the first at 0 s, starts strictly increasing

    def __post_init__(self):
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError("the first step must start at 0 s")
        for (before, _), (start, _) in pairwise(self.steps):
            if start <= before:
                raise ValueError(f"steps must start in increasing order: {start} s after {before} s")

    @classmethod
    def parse(cls, text: str) -> PowerProfile:
        """`W` (constant) or `S:W,S:W,...`; a ValueError says what is wrong and what is expected."""
        parts = [part.strip() for part in text.split(",")]
        if len(parts) == 1 and ":" not in parts[0]:
            return cls(((0, _whole(parts[0], "W", text)),))
        steps = []
        for part in parts:
            start, colon, w = part.partition(":")
            if not colon:
                raise ValueError(f"step {part!r} in power profile {text!r} is not S:W; expected {_PROFILE_SYNTAX}")
            steps.append((_whole(start, "seconds", text), _whole(w, "W", text)))
        try:
            return cls(tuple(steps))
        except ValueError as exc:
            raise ValueError(f"power profile {text!r}: {exc}") from None

    def at(self, elapsed_ms: int) -> tuple[int, int]:
        """(w_in, w_out) at `elapsed_ms` since start: a positive step imports, a negative one exports."""
        if elapsed_ms < 0:
            raise ValueError(f"a profile starts at 0 ms, not {elapsed_ms} ms")
        w = self.steps[bisect_right(self.steps, elapsed_ms // 1000, key=lambda step: step[0]) - 1][1]
        return (w, 0) if w >= 0 else (0, -w)


def _whole(token: str, unit: str, text: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise ValueError(
            f"{token.strip()!r} in power profile {text!r} is not a whole number of {unit}; expected {_PROFILE_SYNTAX}"
        ) from None
