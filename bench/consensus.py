"""Settled trades/s and ERC->settled latency with 4 validators in consensus, beside 1 validator.

Each configuration (a number of validators and a genesis block interval) gets a fresh ledger
dir, a real Mosquitto on a free loopback port and one `spb-ledger run --validator I` process
per validator, all on this machine. With 4 validators each one verifies every transaction
(the proposer while drafting, the others while replaying its proposal), so on one machine the
bound is the raw verify rate times min(cores, validators), shared by 2 verifies per trade and
per validator: raw x min(cores, n) / (2 n) trades/s. It is measured in the same run (raw
pynacl verifies of messages as long as a CTP and an ERC, bench/saturation.py's RawVerify).

- saturation: pre-signed CTPs published at once; each CTP's ERC published as soon as its
  `held` status arrives; rate = trades / (last `settled` - first CTP publish); best of
  --rounds rounds on the same validators.
- latency: CTPs paced at --rate per second for --seconds, each ERC again on its `held`
  status; latency = its `settled` status arriving - the ERC's publish; p50 and p99.

After both, the validators are stopped with SIGTERM, and every `spb-ledger head` must print
the same line and every `spb-ledger audit` pass. Statuses are counted per CTP change (held,
settled) and blocks per height on spb/v1/ledger/blocks: the proposer alone publishes them,
so each should arrive exactly once. Targets (issue 6): with 4 validators >= 1,000 settled
trades/s, and an ERC->settled p50 under 300 ms at 100 trades/s.
Run: `make bench` or `python bench/consensus.py [--trades N] [--rounds R] [--seconds S]
[--rate R] [--validators 4,1] [--block-ms 50,200] [--profile DIR]`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from saturation import RawVerify, make_trades

from broker.clock import wall_ms
from ledger.block import Block
from ledger.workload import SimCommunity
from spb_paper import Bench, Cluster, wait
from wire import topics
from wire.messages import CtpState, open_message

TARGET_RATE, TARGET_P50_MS, TARGET_AT_RATE, TARGET_VALIDATORS = 1000, 300, 100, 4
MAX_VALIDATORS = 4  # SimCommunity has keys for four


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(p / 100 * len(ordered)))) - 1]


class Observer:
    """The bench's one MQTT client: the households' meters (an ERC on each `held`) and a
    counter of statuses per CTP change and of blocks per height."""

    def __init__(self, cluster: Cluster):
        self.lock = threading.Lock()
        self.ercs: dict[bytes, bytes] = {}  # CTP id -> its ERC, until held
        self.erc_sent: dict[bytes, float] = {}
        self.settled_at: dict[bytes, float] = {}
        self.statuses: Counter[tuple[bytes, str]] = Counter()
        self.blocks: Counter[int] = Counter()
        self.problems: list[str] = []
        self.want, self.settled = 0, 0
        self.top = 0  # the highest block a status named
        self.done = threading.Event()
        self.heights = threading.Condition(self.lock)
        self.client = client = cluster.client("bench-community")
        client.subscribe(topics.STATUS_ALL, self.on_status)
        client.subscribe(topics.LEDGER_BLOCKS, self.on_block)
        client.connect()
        if not client.wait_connected(10):
            raise Bench("the bench client did not connect within 10 s")

    def on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        status = open_message(payload, "status").body  # signatures are the ledger's business here
        with self.lock:
            self.statuses[status.ctp, status.state] += 1
            self.top = max(self.top, status.h or 0)
            if self.statuses[status.ctp, status.state] > 1:
                return  # a second copy of a change: counted, not acted on
            if status.state == CtpState.HELD:
                erc = self.ercs.pop(status.ctp, None)
                if erc is not None:
                    self.erc_sent[status.ctp] = time.perf_counter()
                    self.client.publish(topics.TX_ERC, erc)
            elif status.state == CtpState.SETTLED:
                self.settled_at[status.ctp] = time.perf_counter()
                self.settled += 1
                if self.settled == self.want:
                    self.done.set()
            else:
                self.problems.append(f"CTP {status.ctp.hex()} {status.state} ({status.reason})")
                self.done.set()

    def on_block(self, topic: str, payload: bytes, retained: bool) -> None:
        height = Block.from_chain_bytes(payload).header.height
        with self.lock:
            self.blocks[height] += 1
            self.heights.notify_all()

    def expect(self, trades: list[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
        """Arm for a phase: {CTP id: CTP}; the ERCs go out on `held`."""
        ctps = {open_message(ctp, "ctp").body.id: ctp for ctp, _ in trades}
        with self.lock:
            self.done.clear()
            self.settled, self.want = 0, len(trades)
            self.ercs.update({ctp_id: erc for ctp_id, (_, erc) in zip(ctps, trades, strict=True)})
        return ctps

    def check(self) -> None:
        if self.problems:
            raise Bench("; ".join(self.problems[:5]))

    def wait_for_height(self, height: int, timeout: float) -> None:
        with self.lock:
            if not self.heights.wait_for(lambda: max(self.blocks, default=0) >= height, timeout):
                raise Bench(f"block {height} did not appear on {topics.LEDGER_BLOCKS} within {timeout:.0f} s")


def cpu_line(before: dict[str, int], after: dict[str, int], elapsed: float, trades: int) -> str:
    hz = os.sysconf("SC_CLK_TCK")
    spent = {name: (after[name] - before[name]) / hz for name in after}
    ledgers = [name for name in spent if name.startswith("v")]
    total = sum(spent[name] for name in ledgers)
    each = ", ".join(f"{name} {spent[name]:.2f}" for name in ledgers)
    return (
        f"CPU ({elapsed:.2f} s wall, {os.cpu_count()} cores): ledgers {total:.2f} s ({each}; "
        f"{total / trades * 1e6:.0f} us per trade), mosquitto {spent['mosquitto']:.2f} s, "
        f"bench client {spent['bench client']:.2f} s"
    )


def run_config(n: int, block_ms: int, raw: RawVerify, args: argparse.Namespace) -> dict:
    """One cluster: the saturation phase, then the paced one, then stop and check."""
    community = SimCommunity(args.households, wall_ms(), seed=f"consensus bench {n} {block_ms}".encode())
    rounds = [make_trades(community, args.trades) for _ in range(args.rounds)]
    paced = make_trades(community, max(1, round(args.rate * args.seconds)))
    result: dict = {"n": n, "block_ms": block_ms}
    profiles = [args.profile / f"v{i}-of-{n}-block{block_ms}.prof" for i in range(n)] if args.profile else None
    with Cluster(community, n, block_ms, profiles) as cluster:
        observer = Observer(cluster)
        # (a) saturation: best of the rounds, each interleaved with the bound on the same machine
        result["rates"] = []
        for saturating in rounds:
            raw.measure(args.verify_seconds)
            ids = observer.expect(saturating)
            before = cluster.cpu()
            start = time.perf_counter()
            for ctp, _ in saturating:
                observer.client.publish(topics.TX_CTP, ctp)
            wait(observer.done, args.timeout, f"{len(saturating)} settled statuses", cluster)
            observer.check()
            elapsed = max(observer.settled_at[c] for c in ids) - start
            result["rates"].append(len(saturating) / elapsed)
            if result["rates"][-1] == max(result["rates"]):
                result["cpu_saturation"] = cpu_line(before, cluster.cpu(), elapsed, len(saturating))
            time.sleep(args.pause)  # let the last block's stragglers go out
        result["rate"] = max(result["rates"])

        # (b) latency at a paced load
        ctps = observer.expect(paced)
        before = cluster.cpu()
        start = time.perf_counter()
        lag = 0.0
        for k, ctp in enumerate(ctps.values()):
            due = start + k / args.rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            else:
                lag = max(lag, -pause)
            observer.client.publish(topics.TX_CTP, ctp)
        offered = len(ctps) / max(time.perf_counter() - start, 1e-9) if len(ctps) > 1 else args.rate
        wait(observer.done, args.timeout, f"{len(ctps)} settled statuses at {args.rate:g}/s", cluster)
        observer.check()
        elapsed = max(observer.settled_at[c] for c in ctps) - start
        latencies = [(observer.settled_at[c] - observer.erc_sent[c]) * 1000 for c in ctps]
        result.update(
            p50=percentile(latencies, 50),
            p99=percentile(latencies, 99),
            max=max(latencies),
            offered=offered,
            lag=lag,
            paced=len(ctps),
            cpu_latency=cpu_line(before, cluster.cpu(), elapsed, len(ctps)),
        )

        # every block announced, then stop and compare
        observer.wait_for_height(observer.top, 10)
        time.sleep(args.linger)  # a stand-in publishing late would be counted too
        cluster.stop_validators()
        with observer.lock:
            result["status_messages"] = sum(observer.statuses.values())
            result["status_changes"] = len(observer.statuses)
            result["block_messages"] = sum(observer.blocks.values())
            result["block_heights"] = len(observer.blocks)
        expected_changes = 2 * (args.trades * args.rounds + len(ctps))
        if result["status_changes"] != expected_changes:
            raise Bench(f"{result['status_changes']} status changes seen, {expected_changes} expected")
        heads = [cluster.cli("head", i) for i in range(n)]
        audits = [cluster.cli("audit", i) for i in range(n)]
        result["head"] = heads[0][1]
        result["heads_agree"] = all(code == 0 for code, _ in heads) and len({line for _, line in heads}) == 1
        result["audits_ok"] = all(code == 0 and line.startswith("audit ok") for code, line in audits)
        result["audit"] = audits[0][1]
        if not result["heads_agree"] or not result["audits_ok"]:
            result["disagreement"] = "\n".join(
                f"v{i}: {h[1]} | {a[1]}" for i, (h, a) in enumerate(zip(heads, audits, strict=True))
            )
    return result


def validators(n: int) -> str:
    return f"{n} validator" + ("s" if n > 1 else "")


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(results: dict[tuple[int, int], dict], raw: RawVerify, args: argparse.Namespace) -> None:
    cores = os.cpu_count() or 1
    print(
        f"BFT consensus beside one validator: each validator its own `spb-ledger run`, one Mosquitto, "
        f"this process as every household, {cores} cores; {args.trades} trades at saturation "
        f"(best of {args.rounds} rounds), "
        f"{args.rate:g} trades/s for {args.seconds:g} s paced; load average {args.load:.2f} at the start"
    )
    print(
        f"{'raw Ed25519 verify (CTP/ERC length)':44}{raw.best:10.0f} /s  "
        f"(best of {args.rounds * len(results)} in this run)"
    )
    for n in args.validators:
        print(
            f"{f'bound, {validators(n)} on {cores} cores':44}{raw.best * min(cores, n) / (2 * n):10.0f} trades/s"
            f"  (raw x min(cores, n) / (2 n))"
        )
    shown = [n for n in args.validators if n in (TARGET_VALIDATORS, 1)]
    pair = (TARGET_VALIDATORS, 1) if len(shown) == 2 else None
    for block_ms in args.block_ms:
        print()
        head = f"block_ms {block_ms}"
        columns = "".join(f"{validators(n):>15}" for n in args.validators)
        print(f"{head:40}{columns}{'4/1' if pair else '':>8}")
        rows = (
            ("settled trades/s at saturation", "rate", "{:.0f}"),
            (f"ERC->settled p50 at {args.rate:g}/s (ms)", "p50", "{:.0f}"),
            (f"ERC->settled p99 at {args.rate:g}/s (ms)", "p99", "{:.0f}"),
            (f"ERC->settled max at {args.rate:g}/s (ms)", "max", "{:.0f}"),
        )
        for label, key, fmt in rows:
            cells = "".join(f"{fmt.format(results[n, block_ms][key]):>15}" for n in args.validators)
            ratio = f"{results[pair[0], block_ms][key] / results[pair[1], block_ms][key]:8.2f}" if pair else ""
            print(f"{label:40}{cells}{ratio}")
        for label, value in (
            (
                "ratio to its bound (saturation)",
                lambda r: f"{r['rate'] / (raw.best * min(cores, r['n']) / (2 * r['n'])):.2f}",
            ),
            ("CTPs offered (per s)", lambda r: f"{r['offered']:.0f}"),
            ("statuses per CTP change (1 expected)", lambda r: f"{r['status_messages'] / r['status_changes']:.3f}"),
            ("blocks on the bus per height (1)", lambda r: f"{r['block_messages'] / r['block_heights']:.3f}"),
            ("heads agree, audits pass", lambda r: "yes" if r["heads_agree"] and r["audits_ok"] else "NO"),
        ):
            print(f"{label:40}" + "".join(f"{value(results[n, block_ms]):>15}" for n in args.validators))
        for n in args.validators:
            r = results[n, block_ms]
            print(
                f"{validators(n)}, block_ms {block_ms}: saturation rounds "
                + ", ".join(f"{rate:.0f}" for rate in r["rates"])
                + " trades/s"
            )
            print(
                f"  {r['status_messages']} statuses for {r['status_changes']} "
                f"changes, {r['block_messages']} block messages for {r['block_heights']} heights; {r['head']}; "
                f"{r['audit']}"
            )
            if "disagreement" in r:
                print(r["disagreement"])
            print(f"  saturation {r['cpu_saturation']} (best round)")
            print(f"  paced      {r['cpu_latency']}")
            if r["lag"] > 0.05:
                print(f"  the pacer fell behind by up to {r['lag'] * 1000:.0f} ms")
        if TARGET_VALIDATORS in args.validators:
            r = results[TARGET_VALIDATORS, block_ms]
            note = (
                "" if args.rate == TARGET_AT_RATE else f" (the target is at {TARGET_AT_RATE}/s; here {args.rate:g}/s)"
            )
            few = (
                "" if args.trades >= TARGET_RATE else f" (only {args.trades} trades a round: the pipeline never fills)"
            )
            print(
                f"{f'target {TARGET_VALIDATORS} validators >= {TARGET_RATE:,} settled/s':44}"
                f"{met(r['rate'] >= TARGET_RATE):>8}  ({r['rate']:.0f}/s, block_ms {block_ms}){few}"
            )
            print(
                f"{f'target {TARGET_VALIDATORS} validators p50 < {TARGET_P50_MS} ms at {TARGET_AT_RATE}/s':44}"
                f"{met(r['p50'] < TARGET_P50_MS):>8}  ({r['p50']:.0f} ms, block_ms {block_ms}){note}"
            )


def int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("an empty list")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=4000, help="trades at saturation (default 4000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="saturation rounds per configuration; the best counts (default 3)"
    )
    parser.add_argument("--rate", type=float, default=100, help="paced trades/s for the latency (default 100)")
    parser.add_argument("--seconds", type=float, default=10, help="how long to pace (default 10)")
    parser.add_argument(
        "--validators",
        type=int_list,
        default=[4, 1],
        metavar="LIST",
        help=f"validator counts, each 1..{MAX_VALIDATORS} (default 4,1)",
    )
    parser.add_argument(
        "--block-ms",
        type=int_list,
        default=[50, 200],
        metavar="LIST",
        help="genesis block intervals to run (default 50,200)",
    )
    parser.add_argument("--households", type=int, default=10)
    parser.add_argument("--verify-seconds", type=float, default=0.3, help="raw verify measurement per saturation round")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between the two phases")
    parser.add_argument(
        "--linger",
        type=float,
        default=1.0,
        help="seconds to keep counting statuses after the last block appeared (default 1)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="give up a phase after this many seconds")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        type=Path,
        help="run every validator under cProfile, stats to DIR/vI-of-N-blockMS.prof",
    )
    args = parser.parse_args(argv)
    if (
        args.trades < 1
        or args.rounds < 1
        or args.rate <= 0
        or args.seconds <= 0
        or args.households < 2
        or not all(1 <= n <= MAX_VALIDATORS for n in args.validators)
        or min(args.block_ms) < 1
    ):
        parser.error(f"sizes must be positive, validators 1..{MAX_VALIDATORS}, and a community needs 2 households")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    raw = None
    results = {}
    args.load = os.getloadavg()[0]
    try:
        for block_ms in args.block_ms:
            for n in args.validators:
                if raw is None:
                    community = SimCommunity(2, wall_ms(), seed=b"consensus bench bound")
                    raw = RawVerify(*make_trades(community, 1)[0])
                results[n, block_ms] = run_config(n, block_ms, raw, args)
    except Bench as exc:
        print(f"consensus: {exc}", file=sys.stderr)
        return 1
    report(results, raw, args)
    return 0 if all(r["heads_agree"] and r["audits_ok"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
