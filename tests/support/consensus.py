"""Four `spb-ledger run --validator I` processes on a real Mosquitto, a pre-signed load of
trades, and what the validators publish and store."""

from __future__ import annotations

import signal
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from broker.clock import wall_ms
from ledger import consensus as c
from ledger import sim
from ledger.block import Block
from ledger.service import RESTORE, RESTORE_SINCE
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import Inbox, connected, run_module, wait_for
from tests.support.ledger import publish_trades, settled_accounts, signed_trades, statuses, wait_online
from tests.support.procs import Procs
from wire import topics
from wire.messages import open_message

VALIDATORS = 4
HOUSEHOLDS = 8
BALANCE = 100_000


class Validators:
    """A community ledger with four validators, each its own process."""

    WATCHED = (topics.STATUS_ALL, topics.REJECTS, topics.LEDGER_STATE_ALL, topics.LEDGER_BLOCKS, topics.CONSENSUS_ALL)
    HOUSEHOLDS = HOUSEHOLDS

    def __init__(
        self, tmp_path: Path, port: int, make_client, trades: int, block_ms: int = 50, watched: tuple = WATCHED
    ):
        """`watched`: the topics the inbox records (ledger/state at least, for start())."""
        now = wall_ms()
        self.port = port
        self.community = SimCommunity(self.HOUSEHOLDS, now)
        self.root = self.ledger_dir(tmp_path / "ledger", block_ms)
        self.trades = signed_trades(self.community, trades, now)  # (ctp, erc, payer, payee, amount)
        self.inbox = Inbox()
        watcher = make_client(port, "watcher")
        for topic in watched:
            watcher.subscribe(topic, self.inbox)
        connected(watcher)
        self.procs = Procs(tmp_path / "logs")
        self.processes: dict[int, subprocess.Popen] = {}  # the running ones, by index
        self.households = connected(make_client(port, "households", max_inflight=1000))

    def ledger_dir(self, root: Path, block_ms: int) -> Path:
        """The validators' dir: genesis and keys (a v1 chain of the community's households)."""
        return self.community.ledger_dir(root, BALANCE, block_ms, validators=VALIDATORS)

    # -- processes --

    def start(self, i: int) -> None:
        mark = len(self.inbox.messages)
        self.processes[i] = self.procs.start(
            f"v{i}", "ledger.cli", "run", self.root, "--broker", f"127.0.0.1:{self.port}", "--validator", i
        )
        wait_online(self.inbox, mark, i, self.procs.logs)

    def kill(self, i: int) -> None:
        self.procs.kill_9(self.processes.pop(i))

    def stop(self, i: int) -> None:
        self.procs.stop(self.processes.pop(i))

    def pause_all(self) -> None:
        """Freeze every running validator where it stands (SIGSTOP): what reaches it now waits,
        queued at the broker or in its socket, until resume_all()."""
        for process in self.processes.values():
            process.send_signal(signal.SIGSTOP)

    def resume_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for i in list(self.processes):
            self.stop(i)

    def close(self) -> None:
        self.procs.kill_all()

    # -- load --

    def publish(self, trades: list, acked: bool = False) -> None:
        publish_trades(self.households, trades, acked)

    def settled(self) -> set[bytes]:
        return {s.ctp for s in statuses(self.inbox) if s.state == "settled"}

    def wait_settled(self, count: int, timeout: float = 90) -> None:
        wait_for(lambda: len(self.settled()) >= count, timeout, lambda: f"{count} settled; have {len(self.settled())}")

    def round_changes(self, since: int) -> set[tuple[int, int, int]]:
        """(sender, height, round) of every round change seen on spb/v1/consensus/all."""
        found = set()
        for t, p, _ in self.inbox.messages[since:]:
            if t == topics.CONSENSUS_ALL:
                m = c.open_signed(p, self.genesis().validators)
                if m.kind == c.ROUND_CHANGE:
                    found.add((m.sender, m.h, m.r))
        return found

    def blocks_published(self, since: int = 0) -> list[Block]:
        return [Block.from_chain_bytes(p) for t, p, _ in self.inbox.messages[since:] if t == topics.LEDGER_BLOCKS]

    def status_counts(self) -> Counter:
        """How often each (CTP, state) status was published."""
        return Counter((s.ctp, s.state) for s in statuses(self.inbox))

    # -- what each validator stored --

    def genesis(self):
        return ValidatorIdentity.load(self.root, 0, with_key=False).genesis

    def store(self, i: int) -> LedgerStore:
        identity = ValidatorIdentity.load(self.root, i, with_key=False)
        return LedgerStore(identity.db_path, identity.genesis, readonly=True)

    def heads(self, which=range(VALIDATORS)) -> list[tuple[int, bytes, bytes]]:
        heads = []
        for i in which:
            store = self.store(i)
            heads.append(store.head())
            store.close()
        return heads

    def wait_heads_agree(self, which=range(VALIDATORS), timeout: float = 60) -> tuple[int, bytes, bytes]:
        wait_for(
            lambda: len(set(self.heads(which))) == 1 and self.heads(which)[0][0] > 0,
            timeout,
            lambda: f"validators {list(which)} at one head; have {self.heads(which)}",
        )
        return self.heads(which)[0]

    def restoring(self) -> list[int]:
        """The running validators with a status restore the broker has not yet acknowledged
        in full (ledger.service: the durable `restore-since`, or an older ledger's flag)."""
        pending = []
        for i in self.processes:
            store = self.store(i)
            if store.flag(RESTORE) or store.value(RESTORE_SINCE):
                pending.append(i)
            store.close()
        return pending

    def wait_restored(self, timeout: float = 60) -> None:
        """Until every running validator's restore is acknowledged. A restore waits until its
        validator is caught up, which can take a second or more after the load ends; one
        stopped before then restores when it starts again, not now."""
        wait_for(lambda: not self.restoring(), timeout, lambda: f"the restores of validators {self.restoring()}")

    def cli(self, *args: str) -> str:
        done = run_module("ledger.cli", *args)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def check_everywhere(self) -> None:
        """On each validator: one chain (no fork), an audit that passes with every trade, and
        balances moved exactly once per trade.

        One chain, not one head: the validators stop one at a time, and the last three may
        still decide a block after the first stopped (a block of duplicates, say, that a
        restarted validator's redelivered inputs make, docs/CONSENSUS.md). So every head
        must be on the longest chain: the blocks at the lowest head's height are the same."""
        lines = [self.cli("head", str(self.root), "--validator", str(i)) for i in range(VALIDATORS)]
        assert all(line.startswith("height ") for line in lines), lines
        low = min(height for height, _, _ in self.heads())
        at_low = set()
        for i in range(VALIDATORS):
            store = self.store(i)
            block = store.block(low)
            at_low.add(block.header.hash if block is not None else None)
            store.close()
        assert len(at_low) == 1, f"validators forked below height {low}: {lines}"
        for i in range(VALIDATORS):
            out = self.cli("audit", str(self.root), "--validator", str(i))
            assert out.startswith("audit ok") and f", {len(self.trades)} trades," in out, out
            store = self.store(i)
            assert store.accounts() == settled_accounts(self.community, BALANCE, self.trades), f"validator {i}"
            store.close()
        # Every CTP was announced. Not always with `held`: a late publisher (a stand-in, a
        # restarted validator) sends only a CTP's current status, never a superseded one.
        announced = {s.ctp for s in statuses(self.inbox)}
        assert announced == {open_message(ctp, "ctp").body.id for ctp, *_ in self.trades}


@contextmanager
def stood_in_for(v: Validators, keep: Callable[[Any], bool]) -> Iterator[dict[int, set[int]]]:
    """Four validators of v's community as threads of this process, validator 0 publishing
    only the outbox rows `keep` lets through; once all four are online, v's first 40 trades
    go out in 8 waves of 5 (so that heights go round the rotation, and validator 0 proposes),
    each settled. Yields who signed the statuses seen, by height; the validators stop after."""
    from ledger.service import LedgerService

    services = [LedgerService(ValidatorIdentity.load(v.root, i), "127.0.0.1", v.port) for i in range(VALIDATORS)]
    muted = services[0]
    muted._queue = lambda rows, late=False, queue=muted._queue: queue([r for r in rows if keep(r)], late)
    threads = [threading.Thread(target=s.run, daemon=True) for s in services]
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: (
                {t for t, p, _ in v.inbox.messages if p.startswith(b"online")}
                >= {topics.ledger_state(i) for i in range(VALIDATORS)}
            ),
            30,
            "four validators online",
        )
        for wave in range(8):
            v.publish(v.trades[5 * wave : 5 * wave + 5])
            v.wait_settled(5 * wave + 5, timeout=60)
        keys = v.genesis().validators
        signers_by_height: dict[int, set[int]] = {}
        for t, p, _ in v.inbox.messages:
            if t.startswith(topics.ROOT + "/status/"):
                opened = open_message(p, "status")
                signers = {i for i, key in enumerate(keys) if opened.envelope.verifies(key)}
                signers_by_height.setdefault(opened.body.h, set()).update(signers)
        yield signers_by_height
    finally:
        for s in services:
            s.stop()
        for t in threads:
            t.join(15)


def market_sims(seeds: Iterable[int]) -> tuple[list[sim.Sim], list[str]]:
    """Each market seed run to its end and checked: the sims, and each failure with the
    command that replays it."""
    done, failures = [], []
    for seed in seeds:
        s = sim.Sim(seed, market=True)
        try:
            s.run()
            s.final_checks()
        except sim.Violation as exc:
            failures.append(f"{exc}  (replay: make sim SEED={seed} MARKET=1)")
        done.append(s)
    return done, failures
