"""Settled trades/s at saturation with one validator, against raw Ed25519 verifies/s.

Every trade costs the ledger at least two signature verifications (the payer's CTP and the
meter's ERC), so half of pynacl's raw verify rate, measured in the same run on messages as
long as a CTP and an ERC, bounds what a validator can settle. Target (issue): >= 0.4x that
bound with one validator.

- core: what LedgerService does per block, in this process and without MQTT (LedgerNode):
  a Draft verifies and applies the messages, the block is sealed, the statuses are signed,
  and LedgerStore commits block, state and outbox to a real SQLite file (WAL,
  synchronous=FULL).
  Each block holds `--block` new CTPs and the ERCs of the previous block's CTPs.
- end to end: a real Mosquitto and `spb-ledger run` (subprocess); this process publishes a
  batch of pre-signed CTPs at once and the ERC of each CTP as soon as its `held` status
  arrives, and counts `settled` statuses. All processes share this machine's cores.

Run: `make bench` or `python bench/saturation.py [--trades N] [--rounds R] [--e2e-trades N] [--e2e-rounds R]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

from nacl.signing import SigningKey, VerifyKey

from broker.clock import wall_ms
from ledger.genesis import DEFAULT_BLOCK_MS, MarketTerms
from ledger.node import LedgerNode
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from protocol import rate
from spb_paper import BALANCE, Bench, Cluster, cpu_report, trade_pairs, wait
from wire import topics
from wire.messages import CtpState, open_message

TARGET = 0.4


def make_trades(community: SimCommunity, n: int) -> list[tuple[bytes, bytes]]:
    """n (CTP, ERC) pairs, signed in advance."""
    exp = wall_ms() + 3_600_000
    out = []
    for payer, payee in trade_pairs(len(community.households), n):
        ctp = community.ctp(payer, payee, amount=1, wh=100, exp=exp)
        out.append((ctp, community.erc(ctp)))
    return out


class RawVerify:
    """pynacl verifies/s of messages as long as a CTP's and an ERC's signed content, alternately."""

    def __init__(self, ctp: bytes, erc: bytes):
        keys = [SigningKey.generate() for _ in range(32)]
        self.items = [(bytes(k.verify_key), k.sign(b"x" * (len(m) - 64))) for k in keys for m in (ctp, erc)]
        self.best = 0.0

    def measure(self, seconds: float) -> None:
        self.best = max(self.best, rate(lambda it: VerifyKey(it[0]).verify(it[1]), self.items, seconds))


class Core:
    """A validator without a bus (LedgerNode, as LedgerService drives it), block after block;
    on a market chain if `market` is given."""

    def __init__(self, community: SimCommunity, root: Path, market: MarketTerms | None = None):
        self.node = LedgerNode(ValidatorIdentity.load(community.ledger_dir(root, BALANCE, market=market), 0))
        self.delivered: list[int] = []  # outbox rows the broker would have acknowledged

    def decide(self, batch: list[tuple[str, bytes]]) -> None:
        """One block of `batch`, every message of which must be accepted."""
        decided = self.node.decide(batch, wall_ms(), self.delivered)
        if any(decided.reasons):
            raise Bench(f"rejected while deciding: {set(decided.reasons) - {None}}")
        self.delivered = [row.seq for row in decided.queued]  # acknowledged before the next block

    def run(self, trades: list[tuple[bytes, bytes]], block: int) -> float:
        """Settled trades/s: block k holds the CTPs of chunk k and the ERCs of chunk k-1."""
        chunks = [trades[i : i + block] for i in range(0, len(trades), block)]
        start = time.perf_counter()
        for k in range(len(chunks) + 1):
            batch = [("ctp", ctp) for ctp, _ in chunks[k]] if k < len(chunks) else []
            batch += [("erc", erc) for _, erc in chunks[k - 1]] if k > 0 else []
            self.decide(batch)
        return len(trades) / (time.perf_counter() - start)

    def close(self) -> None:
        self.node.close()


def end_to_end(
    community: SimCommunity, rounds: list[list[tuple[bytes, bytes]]], raw: RawVerify, args: argparse.Namespace
) -> tuple[float, str]:
    """Best settled trades/s over the rounds, and the CPU split of that round."""
    best, best_cpu = 0.0, ""
    with Cluster(community, 1, args.block_ms, [Path(args.profile)] if args.profile else None) as ledger:
        lock = threading.Lock()
        state = {"ercs": {}, "settled": 0, "want": 0, "last": 0.0, "problems": [], "heights": {}}
        done = threading.Event()

        client = ledger.client("bench-community")

        def on_status(topic: str, payload: bytes, retained: bool) -> None:
            status = open_message(payload, "status").body  # signatures are the ledger's business here
            seen = state["heights"].setdefault(status.h, [0, 0, time.perf_counter()])
            seen[status.state == CtpState.SETTLED] += 1
            seen[2] = time.perf_counter()
            if status.state == CtpState.HELD:
                erc = state["ercs"].pop(status.ctp, None)
                if erc is not None:
                    client.publish(topics.TX_ERC, erc)
            elif status.state == CtpState.SETTLED:
                with lock:
                    state["settled"] += 1
                    if state["settled"] == state["want"]:
                        state["last"] = time.perf_counter()
                        done.set()
            else:
                state["problems"].append(f"{status.state} ({status.reason})")
                done.set()

        client.subscribe(topics.STATUS_ALL, on_status)
        client.connect()
        if not client.wait_connected(10):
            raise Bench("the bench client did not connect within 10 s")
        for trades in rounds:
            raw.measure(args.seconds)  # the bound, on the same (now idle) machine
            done.clear()
            with lock:
                state["settled"], state["want"] = 0, len(trades)
                state["ercs"].update({open_message(ctp, "ctp").body.id: erc for ctp, erc in trades})
            cpu_before = ledger.cpu()
            start = time.perf_counter()
            for ctp, _ in trades:
                client.publish(topics.TX_CTP, ctp)
            wait(done, args.timeout, f"{len(trades)} settled statuses", ledger)
            if state["problems"]:
                raise Bench("; ".join(state["problems"][:5]))
            elapsed = state["last"] - start
            if len(trades) / elapsed > best:
                best, best_cpu = len(trades) / elapsed, cpu_report(cpu_before, ledger.cpu(), elapsed)
                blocks = ", ".join(
                    f"{(at - start) * 1000:.0f} ms {held}/{settled}"
                    for _, (held, settled, at) in sorted(state["heights"].items())
                )
                best_cpu += f"\nblocks (ms after the first CTP when its last status arrived: held/settled): {blocks}"
            state["heights"].clear()
    return best, best_cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=2000, help="trades per core round (default 2000)")
    parser.add_argument("--block", type=int, default=500, help="new CTPs (and ERCs) per core block (default 500)")
    parser.add_argument("--e2e-trades", type=int, default=4000, help="trades per end-to-end round (default 4000)")
    parser.add_argument("--rounds", type=int, default=5, help="core rounds; the best counts (default 5)")
    parser.add_argument("--e2e-rounds", type=int, default=3, help="end-to-end rounds; the best counts (default 3)")
    parser.add_argument("--seconds", type=float, default=0.5, help="raw verify measurement per round (default 0.5)")
    parser.add_argument("--households", type=int, default=10)
    parser.add_argument("--block-ms", type=int, default=DEFAULT_BLOCK_MS, help="end-to-end genesis block interval")
    parser.add_argument("--timeout", type=float, default=120, help="give up a round after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="run the end-to-end ledger under cProfile, stats to FILE")
    parser.add_argument("--skip-e2e", action="store_true", help="only the in-process core")
    args = parser.parse_args(argv)
    if min(args.trades, args.block, args.e2e_trades, args.rounds, args.e2e_rounds) < 1 or args.households < 2:
        parser.error("sizes must be positive, and a community needs 2 households")

    try:
        core_community = SimCommunity(args.households, wall_ms(), seed=b"saturation core")
        core_rounds = [make_trades(core_community, args.trades) for _ in range(args.rounds)]
        raw = RawVerify(*core_rounds[0][0])
        core_best = 0.0
        with tempfile.TemporaryDirectory(prefix="spb-bench-core-") as tmp:
            core = Core(core_community, Path(tmp) / "ledger")
            try:
                for trades in core_rounds:  # interleaved with the bound, as bench/protocol.py does
                    raw.measure(args.seconds)
                    core_best = max(core_best, core.run(trades, args.block))
            finally:
                core.close()
        if not args.skip_e2e:
            e2e_community = SimCommunity(args.households, wall_ms(), seed=b"saturation e2e")
            e2e_rounds = [make_trades(e2e_community, args.e2e_trades) for _ in range(args.e2e_rounds)]
            e2e_best, e2e_cpu = end_to_end(e2e_community, e2e_rounds, raw, args)
    except Bench as exc:
        print(f"saturation: {exc}", file=sys.stderr)
        return 1

    bound = raw.best / 2
    print(
        f"settled trades/s at saturation, one validator, {os.cpu_count()} cores; best round of "
        f"{args.rounds} (core) and {args.e2e_rounds} (end to end)"
    )
    print(f"{'raw Ed25519 verify (CTP/ERC length)':40}{raw.best:10.0f} /s")
    print(f"{'bound (2 verifies per trade)':40}{bound:10.0f} trades/s")
    print(
        f"{'core: LedgerNode, no MQTT':40}{core_best:10.0f} trades/s   ratio {core_best / bound:.2f}"
        f"  (target >= {TARGET})"
    )
    if not args.skip_e2e:
        print(
            f"{'end to end over Mosquitto':40}{e2e_best:10.0f} trades/s   ratio {e2e_best / bound:.2f}"
            f"  (target >= {TARGET})"
        )
    print(
        f"core: {1e6 / core_best:.0f} us per settled trade ({args.trades} trades, {args.block} per block); "
        f"profile it with `python -m cProfile -s cumtime bench/saturation.py --skip-e2e`"
    )
    if not args.skip_e2e:
        print(f"end to end, {args.e2e_trades} trades per round, block_ms {args.block_ms}: {e2e_cpu}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
