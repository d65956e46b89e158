"""spb-monitor watch: the community live in a terminal, from verified messages only.

`render(snapshot)` is pure (the snapshot of monitor.view in, rich renderables out), so the
tests read the same tables a person sees; `run` refreshes them twice a second. `--once`
prints one frame once every validator and meter of the genesis has been heard of (their
retained states arrive first on subscribing), for scripts and for a quick look over ssh.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from monitor.records import PRODUCTS
from monitor.runner import connected_feed, until_signalled
from monitor.view import FINAL_TRADE, OPEN_ORDER

REFRESH_S = 0.5
SHOWN_TRADES = 12
SHOWN_INTERVALS = 6
STATE_STYLE = {"held": "yellow", "settled": "green", "refunded": "magenta", "rejected": "red"}


def render(snap: dict[str, Any]) -> Group:
    return Group(
        _meters(snap["meters"]),
        _trades(snap["trades"]),
        _market(snap),
        _validators(snap),
        _problems(snap),
    )


def _meters(meters: list[dict[str, Any]]) -> Table:
    table = Table(title="meters", title_justify="left", expand=False)
    for column in ("meter", "online", "W", "Wh in", "Wh out", "readings", "balance", "held", "open trades"):
        table.add_column(column, justify="left" if column == "meter" else "right")
    for m in meters:
        reading, summary = m.get("reading") or {}, m["summary"]
        table.add_row(
            m["meter"],
            Text("●", style="green") if m.get("online") else Text("○", style="dim"),
            _shown(reading.get("w")),
            _shown(reading.get("wh_in")),
            _shown(reading.get("wh_out")),
            str(m.get("readings", 0)),
            _shown(summary["balance_units"]),
            _shown(summary["held_units"]),
            str(summary["open_trades"]),
        )
    return table


def _trades(trades: list[dict[str, Any]]) -> Table:
    open_count = sum(t["state"] not in FINAL_TRADE for t in trades)
    table = Table(title=f"trades ({open_count} open, newest first)", title_justify="left")
    for column in ("trade", "payer", "payee", "Wh", "state", "block", "reason"):
        table.add_column(column)
    for t in trades[:SHOWN_TRADES]:
        table.add_row(
            t["ctp"][:12],
            t.get("payer_meter") or "?",
            t.get("payee_meter") or "?",
            _shown(t.get("wh", t.get("trade_wh"))),
            Text(t["state"], style=STATE_STYLE.get(t["state"], "")),
            _shown(t.get("h")),
            t.get("reason") or "",
        )
    return table


def _market(snap: dict[str, Any]) -> Table:
    table = Table(title="market: last clearings and the book", title_justify="left")
    for column in ("interval", "green price", "green Wh", "open price", "open Wh", "fills", "asks", "bids"):
        table.add_column(column, justify="right")
    book: dict[int, list[int]] = {}
    for order in snap["orders"]:
        if order["state"] in OPEN_ORDER:
            book.setdefault(order["k"], [0, 0])[order["side"] == "bid"] += 1
    results = {r["k"]: r for r in snap["results"]}
    for k in sorted(set(results) | set(book))[-SHOWN_INTERVALS:]:
        r = results.get(k)
        cells = [_shown(r[p][f]) for p in PRODUCTS for f in ("price_units_per_wh", "wh")] if r else ["", "", "", ""]
        asks, bids = book.get(k, [0, 0])
        table.add_row(str(k), *cells, _shown(r["fills"]) if r else "", str(asks), str(bids))
    return table


def _validators(snap: dict[str, Any]) -> Table:
    blocks = snap["blocks"]
    last = blocks[-1] if blocks else None
    title = f"validators (last block #{last['height']}, {last['trades']} trades)" if last else "validators"
    table = Table(title=title, title_justify="left")
    for column in ("validator", "online", "height", "round", "round changes"):
        table.add_column(column, justify="right")
    for v in snap["validators"]:
        table.add_row(
            v["validator"],
            Text("●", style="green") if v["online"] else Text("○", style="red"),
            str(v["height"]),
            str(v["round"]),
            str(v["round_changes"]),
        )
    return table


def _problems(snap: dict[str, Any]) -> Text:
    rejects = ", ".join(f"{reason} {n}" for reason, n in sorted(snap["rejects"].items())) or "none"
    refused = ", ".join(f"{reason} {n}" for reason, n in sorted(snap["unverified"].items())) or "none"
    text = Text(f"ledger rejects: {rejects}\n")
    text.append(f"unverified, not shown: {refused}", style="red" if snap["unverified"] else "dim")
    for refusal in snap["recent_unverified"][-3:]:
        text.append(f"\n  ✗ {refusal['topic']}: {refusal['reason']} ({refusal['detail']})", style="red")
    return text


def _shown(value: object) -> str:
    return "?" if value is None else str(value)


def heard_of_everyone(snap: dict[str, Any]) -> bool:
    """Every validator said its state, every meter of the genesis its state, each online one
    a reading (readings are not retained: the next one, within a reading period), and every
    household its balance."""
    return (
        all(v["said"] for v in snap["validators"])
        and all("online" in m and (m.get("reading") or not m["online"]) for m in snap["meters"])
        and all(m["summary"]["balance_units"] is not None for m in snap["meters"] if snap["interval_s"])
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="print one frame once everyone was heard of, then exit")
    p.add_argument("--timeout", type=float, default=30.0, help="--once: the longest to wait for that (default 30 s)")


def run(args: argparse.Namespace) -> int:
    stop = until_signalled()
    console = Console(highlight=False)
    with connected_feed(args) as (feed, _client):
        if args.once:
            deadline = time.monotonic() + args.timeout
            with feed.changed:
                feed.changed.wait_for(
                    lambda: heard_of_everyone(feed.view.snapshot()), max(0.0, deadline - time.monotonic())
                )
            console.print(render(feed.snapshot()))
            return 0
        with Live(render(feed.snapshot()), console=console, auto_refresh=False) as live:
            while not stop.wait(REFRESH_S):
                live.update(render(feed.snapshot()), refresh=True)
    return 0
