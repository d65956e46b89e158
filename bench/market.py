"""Market orders/s accepted at saturation with one validator, against raw Ed25519 verifies/s.

Every order (an ask or a bid, docs/PROTOCOL.md §9.2) costs the ledger at least one
signature verification (its owner's), so pynacl's raw verify rate, measured in the same run
on messages as long as an ask and a bid, bounds the orders a validator can accept.

- end to end: a real Mosquitto and `spb-ledger run` (subprocess) on a market chain; this
  process publishes a batch of pre-signed asks and bids at once, for an interval whose gate
  is at least one interval away (no clearing during the run), and counts the `order`
  statuses (state `open`) that arrive on spb/v1/market/{k}/order/{id}. All processes share
  this machine's cores.
- core: what LedgerService does per block, in this process and without MQTT (LedgerNode):
  a Draft verifies each order and holds its escrow, the block is sealed, the order
  statuses are signed, and LedgerStore commits block, state and outbox to SQLite.

Run: `make bench` or `python bench/market.py [--orders N] [--rounds R] [--e2e-orders N] [--e2e-rounds R]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from saturation import Core, RawVerify

from broker.clock import wall_ms
from ledger.genesis import DEFAULT_BLOCK_MS, MarketTerms
from ledger.workload import SimCommunity
from spb_paper import Bench, Cluster, cpu_report, wait
from wire import topics
from wire.messages import Order, OrderState, Rejection, open_message

INTERVAL_S = 600  # the orders' interval is the one after the next: its gate is >= 10 min away
SOURCES = ("solar", "wind", "hydro", "grid", "fossil")
TOPIC = {"ask": topics.TX_ASK, "bid": topics.TX_BID}
PER_HOUSEHOLD = 500  # orders per account and round: below a sender's share of the pool (Timing.pool_per_sender)


def community(orders: int, seed: bytes) -> SimCommunity:
    """Enough households that no account has more than PER_HOUSEHOLD orders in a round,
    every one with a meter of some source, so each can ask as well as bid."""
    households = max(2, -(-orders // PER_HOUSEHOLD))
    return SimCommunity(households, wall_ms(), seed=seed, sources=[SOURCES[i % 5] for i in range(households)])


def terms(c: SimCommunity) -> MarketTerms:
    return c.market_terms(interval_s=INTERVAL_S, ahead=2)


def make_orders(c: SimCommunity, n: int, round_no: int) -> list[tuple[str, bytes]]:
    """n orders for the interval after the next, half asks and half bids, alternating, each
    household's in turn; all distinct (the round and the order's number are in its Wh)."""
    k = terms(c).interval(wall_ms()) + 2
    households = len(c.households)
    out = []
    for i in range(n):
        h, wh = i % households, 1 + i + round_no * n
        if i % 2:
            out.append(("bid", c.bid(h, wh, 1 + i % 7, k, green=i % 4 == 1)))
        else:
            out.append(("ask", c.ask(h, wh, 1 + i % 5, k)))
    return out


def core_rate(core: Core, orders: list[tuple[str, bytes]], block: int) -> float:
    """Accepted orders/s of a validator without a bus, `block` orders per block."""
    start = time.perf_counter()
    for i in range(0, len(orders), block):
        core.decide(orders[i : i + block])
    return len(orders) / (time.perf_counter() - start)


def end_to_end(
    c: SimCommunity, rounds: list[list[tuple[str, bytes]]], raw: RawVerify, args: argparse.Namespace
) -> tuple[float, str]:
    """Best accepted orders/s over the rounds (first publish to last `open` status), and the
    CPU split of that round."""
    best, best_cpu = 0.0, ""
    with Cluster(c, 1, args.block_ms, market=terms(c)) as ledger:
        lock = threading.Lock()
        state: dict = {"open": 0, "want": 0, "last": 0.0, "problems": []}
        done = threading.Event()
        client = ledger.client("bench-market")

        def on_market(topic: str, payload: bytes, retained: bool) -> None:
            body = open_message(payload).body  # signatures are the ledger's business here
            if not isinstance(body, Order):
                state["problems"].append(f"{body.typ} on {topic}: an interval cleared during the run")
                done.set()
                return
            with lock:
                state["open"] += body.state == OrderState.OPEN
                if state["open"] == state["want"]:
                    state["last"] = time.perf_counter()
                    done.set()

        def on_reject(topic: str, payload: bytes, retained: bool) -> None:
            state["problems"].append(f"rejected: {open_message(payload, Rejection).body.reason}")
            done.set()

        client.subscribe(topics.MARKET_ALL, on_market)
        client.subscribe(topics.REJECTS, on_reject)
        client.connect()
        if not client.wait_connected(10):
            raise Bench("the bench client did not connect within 10 s")
        for orders in rounds:
            raw.measure(args.seconds)  # the bound, on the same (now idle) machine
            done.clear()
            with lock:
                state["open"], state["want"] = 0, len(orders)
            cpu_before = ledger.cpu()
            start = time.perf_counter()
            for typ, order in orders:
                client.publish(TOPIC[typ], order)
            wait(done, args.timeout, f"{len(orders)} open order statuses", ledger)
            if state["problems"]:
                raise Bench("; ".join(state["problems"][:5]))
            elapsed = state["last"] - start
            if len(orders) / elapsed > best:
                best, best_cpu = len(orders) / elapsed, cpu_report(cpu_before, ledger.cpu(), elapsed)
    return best, best_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=4000, help="orders per core round (default 4000)")
    parser.add_argument("--block", type=int, default=1000, help="orders per core block (default 1000)")
    parser.add_argument("--e2e-orders", type=int, default=4000, help="orders per end-to-end round (default 4000)")
    parser.add_argument("--rounds", type=int, default=3, help="core rounds; the best counts (default 3)")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="end-to-end rounds; the best counts (default 3)")
    parser.add_argument("--seconds", type=float, default=0.5, help="raw verify measurement per round (default 0.5)")
    parser.add_argument("--block-ms", type=int, default=DEFAULT_BLOCK_MS, help="end-to-end genesis block interval")
    parser.add_argument("--timeout", type=float, default=120, help="give up a round after this many seconds")
    parser.add_argument("--skip-core", action="store_true", help="only the end-to-end run")
    args = parser.parse_args(argv)
    if min(args.orders, args.block, args.e2e_orders, args.rounds, args.e2e_rounds) < 1:
        parser.error("sizes must be positive")

    try:
        e2e = community(args.e2e_orders, b"market e2e")
        e2e_rounds = [make_orders(e2e, args.e2e_orders, r) for r in range(args.e2e_rounds)]
        raw = RawVerify(e2e_rounds[0][0][1], e2e_rounds[0][1][1])  # an ask's and a bid's length
        e2e_best, e2e_cpu = end_to_end(e2e, e2e_rounds, raw, args)
        core_best = 0.0
        if not args.skip_core:
            core_community = community(args.orders, b"market core")
            core_rounds = [make_orders(core_community, args.orders, r) for r in range(args.rounds)]
            with tempfile.TemporaryDirectory(prefix="spb-bench-market-") as tmp:
                core = Core(core_community, Path(tmp) / "ledger", terms(core_community))
                try:
                    for orders in core_rounds:  # interleaved with the bound, as bench/protocol.py does
                        raw.measure(args.seconds)
                        core_best = max(core_best, core_rate(core, orders, args.block))
                finally:
                    core.close()
    except Bench as exc:
        print(f"market: {exc}", file=sys.stderr)
        return 1

    print(
        f"orders/s accepted at saturation, one validator, {os.cpu_count()} cores; best round of "
        f"{args.e2e_rounds} (end to end) and {args.rounds} (core)"
    )
    print(f"{'raw Ed25519 verify (ask/bid length)':40}{raw.best:10.0f} /s")
    print(f"{'bound (1 verify per order)':40}{raw.best:10.0f} orders/s")
    print(f"{'end to end over Mosquitto':40}{e2e_best:10.0f} orders/s   ratio {e2e_best / raw.best:.2f}")
    if not args.skip_core:
        print(f"{'core: LedgerNode, no MQTT':40}{core_best:10.0f} orders/s   ratio {core_best / raw.best:.2f}")
        print(f"core: {1e6 / core_best:.0f} us per accepted order ({args.orders} orders, {args.block} per block)")
    print(f"end to end, {args.e2e_orders} orders per round, block_ms {args.block_ms}: {e2e_cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
