"""Market clearing: one interval's book through ledger.clearing.clear, against sorting it.

The bound is sorting the same bids and asks by the same keys, measured in the same run: the
rule cannot do with less (it walks both lists in priority order), so the ratio is comparable
across machines. Target (the clearing issue): 10,000 orders clear in roughly the time of that
sort, and the ratio stays flat from N/10 to 10N orders (a quadratic step would grow it tenfold).
Run: `make bench` or `python bench/clearing.py [--orders N] [--runs R] [--seed S]`.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from collections.abc import Callable

from ledger.clearing import SOURCES, BookAsk, BookBid, ask_priority, bid_priority, clear


def book(orders: int, seed: int) -> tuple[list[BookBid], list[BookAsk]]:
    """About half bids, a third of them green; bids priced 50-150 and asks 30-130 per Wh, so
    most of the book crosses and both walks run long; 1-5000 Wh each; in random order."""
    rng = random.Random(seed)
    ids = [i.to_bytes(8, "big") for i in rng.sample(range(1 << 62), orders)]
    bids, asks = [], []
    for order_id in ids:
        wh = rng.randint(1, 5000)
        if rng.random() < 0.5:
            bids.append(BookBid(order_id, wh, rng.randint(50, 150), rng.random() < 1 / 3))
        else:
            asks.append(BookAsk(order_id, wh, rng.randint(30, 130), rng.choice(SOURCES)))
    return bids, asks


def medians(benchmarks: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each benchmark over `runs` interleaved rounds.

    Interleaving gives both the same background load; the median drops the rounds a
    neighbour disturbed. The collector is off while timing (as in timeit), so a collection
    of the previous round's garbage is not charged to whichever benchmark it lands in.
    """
    times: dict[str, list[float]] = {name: [] for name in benchmarks}
    for _ in range(runs):
        for name, fn in benchmarks.items():
            gc.collect()
            gc.disable()
            try:
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
            finally:
                gc.enable()
    return {name: statistics.median(t) for name, t in times.items()}


def measure(orders: int, seed: int, runs: int) -> tuple[float, float]:
    """(sort seconds, clear seconds) of one seeded book of `orders` orders."""
    bids, asks = book(orders, seed)
    result = medians(
        {
            "sort": lambda: (sorted(bids, key=bid_priority), sorted(asks, key=ask_priority)),
            "clear": lambda: clear(bids, asks),
        },
        runs,
    )
    return result["sort"], result["clear"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000, help="orders in the interval (default 10,000)")
    parser.add_argument("--runs", type=int, default=9, help="rounds per figure; the median is printed")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    bids, asks = book(args.orders, args.seed)
    result = clear(bids, asks)
    green_bids = sum(b.green for b in bids)
    print(
        f"book: {args.orders:,} orders, {len(bids):,} bids ({green_bids:,} green), {len(asks):,} asks, seed {args.seed}"
    )
    for p in result.products:
        print(f"  {p.name:5} price {'-' if p.price is None else p.price}, {p.wh:,} Wh")
    print(f"  {len(result.fills):,} fills")
    sort_s, clear_s = measure(args.orders, args.seed, args.runs)
    print(f"sort bids and asks        {sort_s * 1000:10.3f} ms  (bound, median of {args.runs})")
    print(f"clear                     {clear_s * 1000:10.3f} ms  (median of {args.runs})")
    print(f"ratio clear/sort          {clear_s / sort_s:10.2f}")
    for n in (args.orders // 10, args.orders * 10):
        s, c = measure(n, args.seed, args.runs)
        label = f"ratio at {n:,} orders"
        print(f"{label:26}{c / s:10.2f}     (sort {s * 1000:.3f} ms, clear {c * 1000:.3f} ms)")


if __name__ == "__main__":
    main()
