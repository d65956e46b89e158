"""Integrating power into energy with integers only (§1: no floats in energy or money).

Power is in W and time in ms, so energy accumulates exactly in W·ms; the Wh counters on
the wire are whole Wh derived from it, so rounding never loses or invents energy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

WMS_PER_WH = 3_600_000  # 1 Wh = 3600 W·s = 3,600,000 W·ms


class Claim(Protocol):
    """A trade waiting for energy: `wh` of it, `delivered_wms` counted so far (stored)."""

    @property
    def id(self) -> bytes: ...
    @property
    def wh(self) -> int | None: ...
    @property
    def delivered_wms(self) -> int: ...


ClaimT = TypeVar("ClaimT", bound=Claim)


def share_oldest_first(claims: Iterable[ClaimT], progress: dict[bytes, int], wms: int) -> Sequence[ClaimT]:
    """Give `wms` of new energy to the claims in order (oldest first), each up to its Wh, so
    two trades never count the same energy: what a buyer's meter imports for its trades and a
    seller's meter exports for its sales. Claims of unknown Wh get none. Updates `progress`
    (id -> W·ms, starting from the stored delivered_wms) in place; returns the claims that
    now have all their energy."""
    complete = []
    for claim in claims:
        if wms <= 0:
            break
        if claim.wh is None:
            continue
        have = progress.get(claim.id, claim.delivered_wms)
        take = min(wms, claim.wh * WMS_PER_WH - have)
        if take > 0:
            progress[claim.id] = have + take
            wms -= take
            if progress[claim.id] == claim.wh * WMS_PER_WH:
                complete.append(claim)
    return complete


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
