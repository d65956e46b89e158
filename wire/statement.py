"""A household account's statement (docs/PROTOCOL.md §10.4, docs/decisions/0017-statements.md):
its lines, their totals, the check that they add up, and the two machine formats (CSV and
JSON) that both `spb-ledger statement` and `spb-meter statement` print, so a statement a
meter fetched over the bus prints byte for byte as the validator's database gives it.

Money and energy are integers here; only the formats turn them into text. A statement's
balance check is on an account's whole money (free + held): holds, escrow and refunds move
units between the two but never in or out, so the total changes only by a settled trade,
a fund, a payout or a rotation, each of which is a line.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from wire.messages import RENEWABLE, CtpState, Statement

BOUGHT, SOLD, FUND, PAYOUT, ROTATED_IN, ROTATED_OUT = "bought", "sold", "fund", "payout", "rotated-in", "rotated-out"
TRADES = (BOUGHT, SOLD)
_SIGN = {BOUGHT: -1, SOLD: +1, FUND: +1, PAYOUT: -1, ROTATED_IN: +1, ROTATED_OUT: -1}


class StatementMismatch(AssertionError):
    """Opening + lines != closing: a bug in the ledger or in the builder, never bad input."""


@dataclass(frozen=True, slots=True)
class Line:
    """One movement of the account. A trade (bought or sold, settled or refunded) is proved
    by `spb-ledger proof DIR <id>` (its CTP id, 16 bytes); a fund, payout or rotation by the
    same command with its message hash (32 bytes), a block input of block `height`."""

    kind: str  # bought, sold, fund, payout, rotated-in, rotated-out
    height: int  # the block that settled or refunded the trade, or applied the message
    t: int  # that block's time, ms
    id: bytes  # a trade's CTP or fill id; the message hash of a fund, payout or rotate
    amount: int  # units
    wh: int = 0  # a trade's energy
    state: str = ""  # a trade's: settled or refunded
    src: str = ""  # a trade's energy source, as far as the ledger knows it ("" if it does not)
    party: bytes = b""  # the other account: a trade's seller or buyer, a rotation's other key
    meters: str = ""  # the other side's meter ids, comma-separated (decision 0017: what is known)
    ref: str = ""  # a fund's or payout's external reference

    @property
    def price(self) -> int:
        """Units per Wh, rounded down (a fill's price is exact; a CTP's amount is the payer's)."""
        return self.amount // self.wh if self.wh else 0

    @property
    def effect(self) -> int:
        """What the line does to the account's money (free + held): a refund does nothing."""
        if self.kind in TRADES and self.state != CtpState.SETTLED:
            return 0
        return _SIGN[self.kind] * self.amount

    def wire(self) -> list:
        fields = (self.kind, self.height, self.t, self.id, self.amount, self.wh, self.state, self.src)
        return [*fields, self.party, self.meters, self.ref]


@dataclass(frozen=True, slots=True)
class Totals:
    bought_wh: int
    bought_units: int
    sold_wh: int
    sold_units: int
    funded: int
    paid_out: int
    renewable_wh: int  # of the Wh bought, those from solar, wind or hydro

    @property
    def renewable_permille(self) -> int | None:
        """Renewable Wh per thousand Wh bought, rounded down; None when nothing was bought."""
        return self.renewable_wh * 1000 // self.bought_wh if self.bought_wh else None


@dataclass(frozen=True, slots=True)
class AccountStatement:
    """Account `account`'s money over block times [start, end): its (free, held) after the
    last block before `start` and after block `height`, the last block before `end`."""

    account: bytes
    start: int
    end: int
    height: int
    opening: tuple[int, int]  # (free balance, held)
    closing: tuple[int, int]
    lines: tuple[Line, ...]
    rotated: bytes | None = None  # the key that replaced this one, if one did (at any time)

    def totals(self) -> Totals:
        settled = [ln for ln in self.lines if ln.kind in TRADES and ln.state == CtpState.SETTLED]
        bought = [ln for ln in settled if ln.kind == BOUGHT]
        sold = [ln for ln in settled if ln.kind == SOLD]
        return Totals(
            bought_wh=sum(ln.wh for ln in bought),
            bought_units=sum(ln.amount for ln in bought),
            sold_wh=sum(ln.wh for ln in sold),
            sold_units=sum(ln.amount for ln in sold),
            funded=sum(ln.amount for ln in self.lines if ln.kind == FUND),
            paid_out=sum(ln.amount for ln in self.lines if ln.kind == PAYOUT),
            renewable_wh=sum(ln.wh for ln in bought if ln.src in RENEWABLE),
        )

    def check(self) -> AccountStatement:
        """Itself, if opening + the lines = closing (free + held); else StatementMismatch."""
        moved = sum(ln.effect for ln in self.lines)
        if sum(self.opening) + moved != sum(self.closing):
            raise StatementMismatch(
                f"statement of {self.account.hex()}: opening {sum(self.opening)} + lines {moved:+} "
                f"!= closing {sum(self.closing)}"
            )
        return self

    def body(self, req: bytes, t: int) -> Statement:
        """The `statement` a validator signs in answer to request `req` at its clock `t`."""
        return Statement(
            account=self.account,
            req=req,
            start=self.start,
            end=self.end,
            open=list(self.opening),
            close=list(self.closing),
            lines=[ln.wire() for ln in self.lines],
            h=self.height,
            t=t,
            rotated=self.rotated,
        )

    @classmethod
    def from_body(cls, body: Statement) -> AccountStatement:
        """The statement a `statement` body carries, checked to add up (StatementMismatch)."""
        return cls(
            account=body.account,
            start=body.start,
            end=body.end,
            height=body.h,
            opening=(body.open[0], body.open[1]),
            closing=(body.close[0], body.close[1]),
            lines=tuple(Line(*x) for x in body.lines),
            rotated=body.rotated,
        ).check()

    # -- formats --

    def to_json(self) -> dict:
        totals = self.totals()
        return {
            "account": self.account.hex(),
            "from_ms": self.start,
            "to_ms": self.end,
            "height": self.height,
            "rotated_to": None if self.rotated is None else self.rotated.hex(),
            "opening": {"balance": self.opening[0], "held": self.opening[1]},
            "closing": {"balance": self.closing[0], "held": self.closing[1]},
            "lines": [
                {
                    "kind": ln.kind,
                    "height": ln.height,
                    "t_ms": ln.t,
                    "id": ln.id.hex(),
                    "wh": ln.wh,
                    "amount": ln.amount,
                    "price": ln.price,
                    "state": ln.state,
                    "src": ln.src,
                    "counterparty": ln.party.hex(),
                    "meters": ln.meters,
                    "ref": ln.ref,
                }
                for ln in self.lines
            ],
            "totals": {
                "bought_wh": totals.bought_wh,
                "bought_units": totals.bought_units,
                "sold_wh": totals.sold_wh,
                "sold_units": totals.sold_units,
                "funded": totals.funded,
                "paid_out": totals.paid_out,
                "renewable_wh": totals.renewable_wh,
                "renewable_permille": totals.renewable_permille,
            },
        }

    def to_csv(self) -> str:
        """One row per line, then the opening and closing balances and the totals, each a
        row whose `kind` says what it is (the columns it does not use are empty)."""
        out = io.StringIO()
        rows = csv.writer(out, lineterminator="\n")
        rows.writerow(CSV_COLUMNS)
        for ln in self.lines:
            trade = (ln.kind, ln.height, ln.t, ln.id.hex(), ln.wh, ln.amount, ln.price, ln.state, ln.src)
            rows.writerow([*trade, ln.party.hex(), ln.meters, ln.ref, "", ""])
        totals = self.totals()
        share = totals.renewable_permille
        rows.writerow(["opening", "", self.start, "", "", "", "", "", "", "", "", "", *self.opening])
        rows.writerow(["closing", self.height, self.end, "", "", "", "", "", "", "", "", "", *self.closing])
        for kind, wh, amount, ref in (
            ("total-bought", totals.bought_wh, totals.bought_units, ""),
            ("total-sold", totals.sold_wh, totals.sold_units, ""),
            ("total-funded", "", totals.funded, ""),
            ("total-paid-out", "", totals.paid_out, ""),
            ("renewable", totals.renewable_wh, "", "" if share is None else f"{share}/1000"),
        ):
            rows.writerow([kind, "", "", "", wh, amount, "", "", "", "", "", ref, "", ""])
        return out.getvalue()


CSV_COLUMNS = (
    *("kind", "height", "t_ms", "id", "wh", "amount", "price", "state", "src"),
    *("counterparty", "meters", "ref", "balance", "held"),
)
