"""One account floods the ledger (issue 13): how long the burst takes, what an honest trade
sent during it waits, and what the broker holds meanwhile.

A Mosquitto and n validators (`spb-ledger run`, as in spb_paper.py's Cluster). One household
publishes N signed CTPs (far-future expiry) as fast as its connection takes them; once the
first answer to the flood arrives, another household publishes a CTP and, when it is held,
its ERC. Measured, every second: the height, how many flood CTPs were answered (a status or
a reject), the bytes that crossed spb/v1/consensus/all, and the broker's RSS. Reported: the
time until every flood CTP was answered (or that it never was within --seconds), the
honest trade's CTP -> settled latency, the broker's peak RSS, and the answers by kind.
Run from the repository: `python -m bench.flood [--flood N] [--validators N] [--block-ms MS] [--seconds S]`.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from bench.spb_paper import Cluster, cpu_report
from broker.clock import wall_ms
from ledger import consensus as c
from ledger.block import Block
from ledger.workload import SimCommunity
from wire import topics
from wire.cose import message_hash
from wire.messages import open_message


def rss(pid: int) -> int:
    """Resident bytes of a process (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


class Watch:
    """Statuses, rejects, blocks and consensus bytes, counted as they arrive."""

    def __init__(self, flood: set[bytes], validators: tuple[bytes, ...]):
        self.flood, self.validators = flood, validators
        self.kinds: Counter = Counter()  # consensus messages by kind
        self.round = 0  # the highest round any round change asked for
        self.lock = threading.Lock()
        self.answers: dict[bytes, str] = {}  # flood message hash -> its first answer
        self.states: dict[bytes, set[str]] = {}  # any message hash -> status states naming it
        self.height = 0
        self.consensus_bytes = 0

    def on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        status = open_message(payload, "status").body
        if status.msg is None:
            return
        with self.lock:
            self.states.setdefault(status.msg, set()).add(status.state)
            if status.msg in self.flood:
                self.answers.setdefault(status.msg, status.state)

    def on_reject(self, topic: str, payload: bytes, retained: bool) -> None:
        rejection = open_message(payload, "reject").body
        with self.lock:
            if rejection.msg in self.flood:
                self.answers.setdefault(rejection.msg, f"reject {rejection.reason}")

    def on_block(self, topic: str, payload: bytes, retained: bool) -> None:
        self.height = max(self.height, Block.from_chain_bytes(payload).header.height)

    def on_consensus(self, topic: str, payload: bytes, retained: bool) -> None:
        self.consensus_bytes += len(payload)
        m = c.open_signed(payload, self.validators)
        self.kinds[m.kind] += 1
        if m.kind == c.ROUND_CHANGE:
            self.round = max(self.round, m.r)

    def has(self, digest: bytes, state: str) -> bool:
        with self.lock:
            return state in self.states.get(digest, ())


def run(args: argparse.Namespace) -> int:
    now = wall_ms()
    community = SimCommunity(4, now, seed=b"flood bench")
    print(f"signing {args.flood} CTPs ...", flush=True)
    flood = [community.ctp(0, 1, amount=1, wh=1, exp=now + 3_600_000) for _ in range(args.flood)]
    honest_ctp = community.ctp(2, 3, amount=7, wh=1, exp=now + 3_600_000)
    honest_erc = community.erc(honest_ctp)
    validators = community.genesis(1, validators=args.validators).validators
    watch = Watch({message_hash(raw) for raw in flood}, validators)
    profiles = [args.profile / f"v{i}.prof" for i in range(args.validators)] if args.profile else None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    with Cluster(community, n=args.validators, block_ms=args.block_ms, profiles=profiles) as cluster:
        observer = cluster.client("bench-observer", max_inflight=0)
        observer.subscribe(topics.STATUS_ALL, watch.on_status)
        observer.subscribe(topics.REJECTS, watch.on_reject)
        observer.subscribe(topics.LEDGER_BLOCKS, watch.on_block)
        observer.subscribe(topics.CONSENSUS_ALL, watch.on_consensus)
        observer.connect()
        flooder = cluster.client("bench-flooder", max_inflight=0)
        flooder.connect()
        households = cluster.client("bench-households")
        households.connect()
        if not (observer.wait_connected(10) and flooder.wait_connected(10) and households.wait_connected(10)):
            print("clients did not connect", file=sys.stderr)
            return 1
        broker = cluster.broker.pid
        first_rss = peak_rss = rss(broker)
        cpu_before = cluster.cpu()
        start = time.monotonic()
        for raw in flood:
            flooder.publish(topics.TX_CTP, raw)
        honest_sent = honest_held = honest_settled = drained = None
        answered_at_honest = 0
        next_line = start
        while time.monotonic() - start < args.seconds:
            cluster.check_alive()
            t = time.monotonic()
            peak_rss = max(peak_rss, rss(broker))
            answered = len(watch.answers)
            if honest_sent is None and answered:
                honest_sent, answered_at_honest = t, answered
                households.publish(topics.TX_CTP, honest_ctp)
            if honest_sent is not None and honest_held is None and watch.has(message_hash(honest_ctp), "held"):
                honest_held = t
                households.publish(topics.TX_ERC, honest_erc)
            if honest_settled is None and watch.has(message_hash(honest_erc), "settled"):
                honest_settled = t
            if drained is None and answered == args.flood:
                drained = t
            if t >= next_line:
                print(
                    f"{t - start:6.1f} s  height {watch.height:5d}  answered {answered:6d}  consensus "
                    f"{watch.consensus_bytes / 1e6:6.1f} MB ({watch.kinds[c.TXS]} txs, "
                    f"{watch.kinds[c.ROUND_CHANGE]} round changes up to round {watch.round})  "
                    f"broker RSS {rss(broker) / 2**20:6.1f} MiB",
                    flush=True,
                )
                next_line += 1.0
            if drained is not None and honest_settled is not None:
                break
            time.sleep(0.02)
        kinds = Counter(watch.answers.values())
        cpu = cpu_report(cpu_before, cluster.cpu(), time.monotonic() - start)
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for i in range(args.validators):
                shutil.copy(cluster.log_path(i), args.logs / f"v{i}.log")
    answered = f"after {drained - start:.1f} s" if drained else f"never ({len(watch.answers)} of {args.flood})"
    settled = f"{honest_settled - honest_sent:.2f} s after its CTP" if honest_settled else "never"
    print(
        f"flood {args.flood} CTPs, {args.validators} validators, block_ms {args.block_ms}:\n"
        f"  every flood CTP answered  {answered}\n"
        f"  honest trade settled      {settled} (sent after {answered_at_honest} flood answers)\n"
        f"  broker RSS                {first_rss / 2**20:.1f} MiB at the start, peak {peak_rss / 2**20:.1f} MiB\n"
        f"  consensus/all             {watch.consensus_bytes / 1e6:.1f} MB\n"
        f"  answers                   {dict(kinds)}\n"
        f"  {cpu}"
    )
    return 0 if drained and honest_settled else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flood", description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=20_000, help="CTPs in the burst (default 20000)")
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--block-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=120, help="give up after this long (default 120)")
    parser.add_argument("--logs", type=Path, help="copy the validators' logs to this directory")
    parser.add_argument("--profile", type=Path, help="run each validator under cProfile, output in this directory")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
