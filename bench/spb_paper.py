"""SPB's 100-trade experiment, end to end: elapsed time and chain bytes beside Dorri et al.

A real Mosquitto, one validator (`spb-ledger run` as a subprocess) and a simulated
community of households, all on this machine. Every trade takes the protocol's own path:
the payer publishes its CTP, the ledger holds the money in a block, the payer's meter sees
the `held` status and publishes its ERC, the ledger settles the trade in a later block and
announces `settled`. Measured: wall time from the first CTP publish until the last
`settled` status arrived, and the bytes of every block published on spb/v1/ledger/blocks
(Block.chain_bytes(), cross-checked against the validator's database).

The baseline beside it is SPB's smart-contract baseline, which puts 3 transactions per
trade on chain (escrow deploy, payment, payout). It is not run: its chain bytes are
computed from this run's own messages and blocks (see `baseline_blocks`), and its time is
not measured. Targets (issue): under 2 s, at most 400 B of chain per trade.
Run: `make bench` or `python bench/spb_paper.py [--trades N] [--households N]`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from hashlib import sha256
from pathlib import Path

from broker.client import BusClient
from broker.clock import wall_ms
from broker.runtime import Mosquitto, free_port, wait_or_kill
from ledger.block import Block, Header, merkle_root
from ledger.genesis import DEFAULT_BLOCK_MS, MarketTerms
from ledger.workload import SimCommunity, pk
from wire import topics
from wire.cose import encode, sign1
from wire.messages import CtpState, open_message
from wire.reasons import Reject
from wire.verify import Verifier

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
PAPER = {"spb": (16.6 * 60, 520_000), "baseline": (32 * 60, 860_000)}  # Dorri et al.: s, bytes for 100 trades
TARGET_S, TARGET_BYTES = 2.0, 400
BALANCE = 10**12


class Bench(Exception):
    """The run could not finish (a rejection, a dead process, a timeout)."""


def wait(event: threading.Event, timeout: float, what: str, ledger: Cluster) -> None:
    """Wait for event, failing fast if the ledger or the broker died meanwhile."""
    deadline = time.monotonic() + timeout
    while not event.wait(0.05):
        ledger.check_alive()
        if time.monotonic() > deadline:
            raise Bench(
                f"timed out after {timeout:.0f} s waiting for {what}; the ledger's log ends:\n{ledger.log_tail()}"
            )


def cpu_ticks(pid: int) -> dict[int, int]:
    """utime + stime (clock ticks) of each thread of a process, by thread id ({} if gone)."""
    ticks = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
            ticks[int(tid)] = int(fields[11]) + int(fields[12])
    except OSError:
        pass
    return ticks


class Cluster:
    """A temp dir with a Mosquitto and n validators of `community`'s ledger, each its own
    `spb-ledger run --validator I`; `profiles[i]`, if given, is validator i's cProfile output;
    `market`, the genesis' market terms (None: a v1 chain)."""

    def __init__(
        self,
        community: SimCommunity,
        n: int = 1,
        block_ms: int = DEFAULT_BLOCK_MS,
        profiles: list[Path] | None = None,
        market: MarketTerms | None = None,
    ):
        self.community, self.n, self.block_ms, self.profiles = community, n, block_ms, profiles
        self.market = market
        self.tmp = tempfile.TemporaryDirectory(prefix="spb-bench-")
        self.dir = Path(self.tmp.name)
        self.root = self.dir / "ledger"
        self.broker = Mosquitto()
        self.processes: list[subprocess.Popen] = []
        self.clients: list[BusClient] = []

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        self.broker.start(free_port(), self.dir / "mosquitto")
        self.community.ledger_dir(self.root, BALANCE, self.block_ms, validators=self.n, market=self.market)
        online: set[str] = set()
        all_online = threading.Event()
        watcher = self.client("bench-ledger-state")

        def on_state(topic: str, payload: bytes, retained: bool) -> None:
            (online.add if payload.startswith(topics.ONLINE) else online.discard)(topic)
            if len(online) == self.n:
                all_online.set()

        watcher.subscribe(topics.LEDGER_STATE_ALL, on_state)
        watcher.connect()
        for i in range(self.n):
            command = [
                sys.executable,
                "-m",
                "ledger.cli",
                "run",
                str(self.root),
                "--broker",
                f"{HOST}:{self.broker.port}",
                "--validator",
                str(i),
            ]
            if self.profiles:
                command[1:3] = ["-m", "cProfile", "-o", str(self.profiles[i].resolve()), "-m", "ledger.cli"]
            with self.log_path(i).open("wb") as log:
                self.processes.append(
                    subprocess.Popen(
                        command,
                        cwd=REPO,
                        env={**os.environ, "PYTHONPATH": str(REPO)},
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        wait(all_online, 30, f"{self.n} validator(s) to come online", self)

    def log_path(self, i: int) -> Path:
        return self.dir / f"v{i}.log"

    def client(self, client_id: str, **options) -> BusClient:
        """A BusClient on this broker (clean session), closed with the run."""
        client = BusClient(
            HOST,
            self.broker.port,
            client_id,
            clean_session=True,
            reconnect_min_delay=0.05,
            reconnect_max_delay=0.5,
            **options,
        )
        self.clients.append(client)
        return client

    def check_alive(self) -> None:
        for i, process in enumerate(self.processes):
            if process.poll() is not None:
                raise Bench(f"validator {i} exited with {process.returncode}:\n{self.log_tail()}")
        if not self.broker.running():
            raise Bench(f"mosquitto died: {self.broker.exit_report()}")

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for i in range(self.n):
            text = self.log_path(i).read_text(errors="replace").splitlines()
            tails.append(f"-- v{i}:\n" + "\n".join(text[-lines:]))
        return "\n".join(tails)

    def cpu(self) -> dict[str, int]:
        """CPU clock ticks so far: each validator (all its threads; `ledger` when it is the
        only one), mosquitto, this process."""
        ticks = {
            ("ledger" if self.n == 1 else f"v{i}"): sum(cpu_ticks(p.pid).values()) for i, p in enumerate(self.processes)
        }
        broker_process = getattr(self.broker, "_process", None)
        ticks["mosquitto"] = sum(cpu_ticks(broker_process.pid).values()) if broker_process else 0
        ticks["bench client"] = sum(cpu_ticks(os.getpid()).values())
        return ticks

    def stop_validators(self, timeout: float = 30) -> None:
        """SIGTERM to all at once, as an operator stops them; each says `offline` and exits."""
        processes, self.processes = self.processes, []
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        stuck = [i for i, process in enumerate(processes) if not wait_or_kill(process, timeout)]
        if stuck:
            raise Bench(f"validators {stuck} ignored SIGTERM for {timeout:.0f} s")

    def cli(self, command: str, i: int) -> tuple[int, str]:
        """(exit code, output) of `spb-ledger COMMAND DIR --validator I`."""
        result = subprocess.run(
            [sys.executable, "-m", "ledger.cli", command, str(self.root), "--validator", str(i)],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return result.returncode, (result.stdout + result.stderr).strip()

    def close(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()
        try:
            self.stop_validators()
        finally:
            self.broker.stop()
            self.tmp.cleanup()


def cpu_report(before: dict[str, int], after: dict[str, int], elapsed: float) -> str:
    hz = os.sysconf("SC_CLK_TCK")
    parts = [f"{name} {(after[name] - before[name]) / hz:.2f} s" for name in after]
    return f"CPU during the run ({elapsed:.2f} s wall, {os.cpu_count()} cores): " + ", ".join(parts)


def trade_pairs(households: int, trades: int):
    """(payer, payee) of each trade: every household buys and sells."""
    for i in range(trades):
        payer = i % households
        yield payer, (payer + 1 + (i // households) % (households - 1)) % households


def payout_record(ctp_id: bytes, payee: bytes, amount: int, t: int, key) -> bytes:
    """The baseline's third transaction: the escrow paying the seller, signed by the validator
    that runs the contract. Same COSE_Sign1 envelope and CBOR as every other message."""
    return sign1(encode({"v": 1, "typ": "payout", "ctp": ctp_id, "payee": payee, "amount": amount, "t": t}), key)


def baseline_blocks(
    blocks: list[Block],
    held_at: dict[bytes, int],
    settled_at: dict[bytes, int],
    ctps: dict[bytes, bytes],
    ercs: dict[bytes, bytes],
    key,
) -> list[Block]:
    """The blocks SPB's smart-contract baseline would write for the same run.

    Per trade it keeps 3 signed transactions on chain instead of one: the escrow deploy (the
    full signed CTP) in the block that held it, then the payment (the full signed ERC: the
    receipt the contract must see on chain to release the money) and the payout (a
    validator-signed transfer to the payee) in the block that settled it. Block heights,
    times, CTP and input roots are this run's; the txs root is recomputed over the baseline's
    transactions and each block is sealed by the same validator, so header and seal sizes
    match a real chain of that format. Putting the payout in the same block as the payment
    (no extra block) favours the baseline.
    """
    by_height: dict[int, list[bytes]] = {}
    for ctp_id, height in held_at.items():
        by_height.setdefault(height, []).append(ctps[ctp_id])
    out, prev = [], blocks[0].header.prev if blocks else b""
    for block in blocks:
        h = block.header
        txs = list(by_height.get(h.height, []))
        for ctp_id, height in settled_at.items():
            if height == h.height:
                ctp = open_message(ctps[ctp_id], "ctp").body
                txs += [ercs[ctp_id], payout_record(ctp_id, ctp.payee, ctp.amount, h.t, key)]
        header = Header(
            h.height, prev, h.t, txs=merkle_root([sha256(tx).digest() for tx in txs]), ctps=h.ctps, inputs=h.inputs
        )
        out.append(Block(header, tuple(txs), ()).sealed(0, key))
        prev = header.hash
    return out


def run(args: argparse.Namespace) -> dict:
    now = wall_ms()
    community = SimCommunity(args.households, now)
    validator = community.validator_keys[0]
    pairs = list(trade_pairs(args.households, args.trades))
    # Everything signed before the clock starts: the CTPs and the ERCs their meters will send.
    ctps: dict[bytes, bytes] = {}
    payer_of: dict[bytes, int] = {}
    for payer, payee in pairs:
        raw = community.ctp(payer, payee, amount=10, wh=250, exp=now + 3_600_000)
        ctp_id = open_message(raw, "ctp").body.id
        ctps[ctp_id], payer_of[ctp_id] = raw, payer
    ercs = {ctp_id: community.erc(raw) for ctp_id, raw in ctps.items()}
    verifier = Verifier(cas=[pk(community.ca)], validators=[pk(validator)])

    lock = threading.Lock()
    published: dict[bytes, float] = {}
    held_at: dict[bytes, int] = {}
    settled_at: dict[bytes, int] = {}
    settled_time: dict[bytes, float] = {}
    blocks: list[bytes] = []
    block_time: list[float] = []
    problems: list[str] = []
    done, last_block = threading.Event(), threading.Event()
    want_height = [None]

    with Cluster(community, 1, args.block_ms, [Path(args.profile)] if args.profile else None) as ledger:

        def on_block(topic: str, payload: bytes, retained: bool) -> None:
            with lock:
                blocks.append(payload)
                block_time.append(time.perf_counter())
                if want_height[0] is not None and Block.from_chain_bytes(payload).header.height >= want_height[0]:
                    last_block.set()

        def on_reject(topic: str, payload: bytes, retained: bool) -> None:
            problems.append(f"rejected: {open_message(payload, 'reject').body.reason}")
            done.set()

        observer = ledger.client("bench-observer")
        observer.subscribe(topics.LEDGER_BLOCKS, on_block)
        observer.subscribe(topics.REJECTS, on_reject)

        homes: list[BusClient] = []
        for household in community.households:
            home = ledger.client(f"household-{household.meter_id}")

            def on_status(topic: str, payload: bytes, retained: bool, home=home) -> None:
                try:  # only the validator's word counts
                    status = verifier.verify(payload, wall_ms(), expect="status").body
                except Reject as exc:
                    problems.append(f"a status that does not verify: {exc.reason}")
                    done.set()
                    return
                if status.state == CtpState.HELD:
                    held_at[status.ctp] = status.h
                    home.publish(topics.TX_ERC, ercs[status.ctp])  # the meter confirms the energy arrived
                elif status.state == CtpState.SETTLED:
                    with lock:
                        settled_at[status.ctp], settled_time[status.ctp] = status.h, time.perf_counter()
                        if len(settled_at) == len(ctps):
                            done.set()
                else:
                    problems.append(f"CTP {status.ctp.hex()} {status.state} ({status.reason})")
                    done.set()

            for ctp_id, payer in payer_of.items():
                if payer == household.index:
                    home.subscribe(topics.status(ctp_id), on_status)
            homes.append(home)
        for client in (observer, *homes):
            client.connect()
        for client in (observer, *homes):
            if not client.wait_connected(10):
                raise Bench(f"{client.client_id} did not connect and subscribe within 10 s")

        cpu_before = ledger.cpu()
        start = time.perf_counter()
        for ctp_id, raw in ctps.items():
            published[ctp_id] = time.perf_counter()
            homes[payer_of[ctp_id]].publish(topics.TX_CTP, raw)
        wait(done, args.timeout, f"{len(ctps)} settled statuses", ledger)
        if problems:
            raise Bench("; ".join(problems[:5]))
        elapsed = max(settled_time.values()) - start
        cpu_after = ledger.cpu()
        with lock:
            want_height[0] = max(settled_at.values())
            if any(Block.from_chain_bytes(b).header.height >= want_height[0] for b in blocks):
                last_block.set()
        wait(last_block, 10, f"block {want_height[0]} on {topics.LEDGER_BLOCKS}", ledger)
        ledger.stop_validators()
        db = db_check(ledger.root)

    chain = [Block.from_chain_bytes(b) for b in blocks]
    chain_bytes = sum(map(len, blocks))
    if db["chain_bytes"] != chain_bytes or db["trades"] != len(ctps):
        raise Bench(f"the validator's database disagrees with the bus: {db} vs {chain_bytes} B")
    base = baseline_blocks(chain, held_at, settled_at, ctps, ercs, validator)
    timeline = []
    for block, at in zip(chain, block_time, strict=True):  # appended together
        held = sum(1 for h in held_at.values() if h == block.header.height)
        timeline.append(f"{(at - start) * 1000:.0f} ms ({held} held, {len(block.trades)} settled)")
    latencies = sorted(settled_time[c] - published[c] for c in ctps)
    return {
        "trades": len(ctps),
        "elapsed": elapsed,
        "chain_bytes": chain_bytes,
        "blocks": len(chain),
        "trade_bytes": sum(len(t) for b in chain for t in b.trades),
        "baseline_bytes": sum(len(b.chain_bytes()) for b in base),
        "baseline_tx_bytes": sum(len(t) for b in base for t in b.trades),
        "latency_p50": statistics.median(latencies),
        "latency_max": latencies[-1],
        "timeline": ", ".join(timeline),
        "cpu": cpu_report(cpu_before, cpu_after, elapsed),
        "audit": db["audit"],
    }


def db_check(root: Path) -> dict:
    """Chain bytes and trades in the stopped validator's database, and `spb-ledger audit`."""
    from ledger.audit import audit
    from ledger.store import LedgerStore
    from ledger.validator import ValidatorIdentity

    identity = ValidatorIdentity.load(root, 0, with_key=False)
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    try:
        (chain_bytes,), (trades,) = (
            store.db.execute(q).fetchone()
            for q in ("SELECT coalesce(sum(length(chain)), 0) FROM blocks", "SELECT count(*) FROM trades")
        )
        report = audit(store)
        return {
            "chain_bytes": chain_bytes,
            "trades": trades,
            "audit": f"audit ok: height {report.height}, {report.trades} trades, {report.ctps} CTPs",
        }
    finally:
        store.close()


def kb(n: float) -> str:
    return f"{n / 1000:,.1f} KB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=100, help="trades to settle (default 100, as in the paper)")
    parser.add_argument("--households", type=int, default=10, help="households trading (default 10)")
    parser.add_argument(
        "--block-ms",
        type=int,
        default=DEFAULT_BLOCK_MS,
        help=f"the genesis block interval (default {DEFAULT_BLOCK_MS}, the ledger's default)",
    )
    parser.add_argument("--timeout", type=float, default=120, help="give up after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="run the ledger under cProfile, stats to FILE")
    args = parser.parse_args(argv)
    if args.trades < 1 or args.households < 2:
        parser.error("need at least 1 trade and 2 households")
    try:
        r = run(args)
    except Bench as exc:
        print(f"spb_paper: {exc}", file=sys.stderr)
        return 1
    n = r["trades"]
    per_trade, base_per_trade = r["chain_bytes"] / n, r["baseline_bytes"] / n
    print(
        f"{n} trades end to end (CTP -> held -> ERC -> settled), {args.households} households, "
        f"1 validator (spb-ledger run), Mosquitto, block_ms {args.block_ms}"
    )
    print(f"{'':28}{'time':>12}{'chain':>13}{'per trade':>12}")
    print(f"{'SPB flow, this run':28}{r['elapsed']:>10.2f} s{r['chain_bytes']:>11,} B{per_trade:>10,.0f} B")
    print(f"{'baseline, modelled (*)':28}{'n/a':>12}{r['baseline_bytes']:>11,} B{base_per_trade:>10,.0f} B")
    for name, label in (("spb", "SPB, Dorri et al."), ("baseline", "baseline, Dorri et al.")):
        seconds, nbytes = PAPER[name]
        print(f"{label:28}{seconds / 60:>8.1f} min{kb(nbytes):>13}{nbytes / 100:>10,.0f} B")
    print(f"{'target':28}{'< 2 s':>12}{'':>13}{'<= 400 B':>12}")
    print(
        f"(*) not run: 3 on-chain transactions per trade (escrow deploy = full CTP, payment = full ERC,\n"
        f"    payout = validator-signed transfer) in this run's blocks; "
        f"{r['baseline_tx_bytes'] / n:,.0f} B of them per trade"
    )
    print(
        f"blocks {r['blocks']}: trades {r['trade_bytes'] / n:,.0f} B/trade, headers and seals "
        f"{(r['chain_bytes'] - r['trade_bytes']) / n:,.0f} B/trade; "
        f"baseline/SPB chain {base_per_trade / per_trade:.2f}x"
    )
    print(f"blocks arrived at {r['timeline']}")
    print(
        f"per-trade latency, CTP publish to settled: median {r['latency_p50'] * 1000:.0f} ms, "
        f"max {r['latency_max'] * 1000:.0f} ms"
    )
    print(r["cpu"])
    print(f"validator database: same chain bytes as the bus; {r['audit']}")
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    note = "" if n == 100 else f"  (the targets are for 100 trades; this run had {n})"
    print(f"{f'target time < {TARGET_S:g} s':28}{met(r['elapsed'] < TARGET_S):>12}  ({r['elapsed']:.2f} s){note}")
    print(
        f"{f'target chain <= {TARGET_BYTES} B/trade':28}{met(per_trade <= TARGET_BYTES):>12}  ({per_trade:.0f} B){note}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
