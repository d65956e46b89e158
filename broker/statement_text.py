"""What `spb-ledger statement` and `spb-meter statement` share at the edge (decision 0017):
the dates they take and the human format they print. The data and the machine formats are
wire.statement's; here the integers become dates, a table and a percentage."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import IO

from rich.console import Console
from rich.table import Table

from wire.statement import AccountStatement

FORMATS = ("text", "csv", "json")


def iso_ms(text: str) -> int:
    """An ISO 8601 date or date-time, UTC unless it names an offset, as ms since the epoch."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date (2026-12-01) or date-time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_statement(statement: AccountStatement, fmt: str, out: IO[str] | None = None) -> None:
    out = sys.stdout if out is None else out
    if fmt == "json":
        out.write(json.dumps(statement.to_json(), indent=1) + "\n")
    elif fmt == "csv":
        out.write(statement.to_csv())
    else:
        Console(file=out, width=160).print(_table(statement))


def _table(s: AccountStatement) -> Table:
    totals = s.totals()
    share = totals.renewable_permille
    caption = [
        f"opening {s.opening[0]} free + {s.opening[1]} held, closing {s.closing[0]} free + {s.closing[1]} held "
        f"(block {s.height})",
        f"bought {totals.bought_wh} Wh for {totals.bought_units}, sold {totals.sold_wh} Wh for {totals.sold_units}, "
        f"funded {totals.funded}, paid out {totals.paid_out}, renewable "
        + ("-" if share is None else f"{share // 10}.{share % 10}%"),
    ]
    if s.rotated is not None:
        caption.append(f"this key was replaced by {s.rotated.hex()}")
    table = Table(
        title=f"account {s.account.hex()[:16]}… from {_when(s.start)} to {_when(s.end)} UTC",
        caption="\n".join(caption),
    )
    for column in ("block", "time (UTC)", "what", "Wh", "units", "per Wh", "source", "other side", "proof id"):
        table.add_column(column, justify="right" if column in ("block", "Wh", "units", "per Wh") else "left")
    for ln in s.lines:
        what = f"{ln.kind} ({ln.state})" if ln.state else ln.kind
        other = ln.meters or ln.ref or ln.party.hex()[:16]
        wh, price = (str(ln.wh), str(ln.price)) if ln.wh else ("", "")
        table.add_row(str(ln.height), _when(ln.t), what, wh, str(ln.amount), price, ln.src, other, ln.id.hex())
    return table
