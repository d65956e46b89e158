"""Crashes in the middle of a load: `kill -9` of a real `spb-ledger run`, and restarts of
the broker under a running ledger. Nothing is applied twice, nothing is lost, balances are
exact and the audit passes."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass

import pytest

from broker.clock import wall_ms
from ledger.audit import audit
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from tests.support.ledger import (
    RunningLedger,
    ledger_dir,
    publish_trades,
    rejections,
    settled_accounts,
    signed_trades,
    statuses,
)
from wire import topics
from wire.messages import open_message

TRADES = 1200
CRASHES = 3
HOUSEHOLDS = 8
BALANCE = 100_000


@dataclass
class Load:
    """TRADES pre-signed trades of a community, and a watcher of what the ledger publishes."""

    community: SimCommunity
    root: object
    trades: list  # (ctp, erc, payer, payee, amount)
    inbox: Inbox

    def publish(self, client) -> None:
        publish_trades(client, self.trades)

    def settled(self) -> set[bytes]:
        return {s.ctp for s in statuses(self.inbox) if s.state == "settled"}

    def crash_points(self):
        """Yield CRASHES times, at about 1/4, 2/4 and 3/4 of the trades settled; assert that at
        least one crash came while work was left (else the test proved nothing)."""
        unfinished = 0
        for k in range(1, CRASHES + 1):
            goal = k * TRADES // (CRASHES + 1)
            wait_for(
                lambda goal=goal: len(self.settled()) >= goal,
                60,
                lambda goal=goal: f"{goal} settled; have {len(self.settled())}",
            )
            unfinished += len(self.settled()) < TRADES
            yield
        assert unfinished, "every crash came after the load was done"

    def check(self) -> None:
        """Every trade settled once and moved its amount once; the chain audits; a message
        redelivered after a crash was a `duplicate`, never applied again."""
        wait_for(lambda: len(self.settled()) == TRADES, 60, lambda: f"all settled; have {len(self.settled())}")
        identity = ValidatorIdentity.load(self.root, 0, with_key=False)
        store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
        assert store.accounts() == settled_accounts(self.community, BALANCE, self.trades)
        report = audit(store)
        assert report.trades == TRADES and report.ctps == TRADES
        # unknown-ctp: an ERC the broker delivered again ahead of its CTP's redelivery; ERC
        # rejections are not final, and the trade settled when it came again (checked above).
        assert {r.reason for r in rejections(self.inbox)} <= {"duplicate", "unknown-ctp"}
        held = {s.ctp for s in statuses(self.inbox) if s.state == "held"}
        assert held == {open_message(ctp, "ctp").body.id for ctp, *_ in self.trades}


def make_load(tmp_path, port, make_client) -> Load:
    now = wall_ms()
    community = SimCommunity(HOUSEHOLDS, now)
    trades = signed_trades(community, TRADES, now)
    inbox = Inbox()
    watcher = make_client(port, "watcher")
    for topic in (topics.STATUS_ALL, topics.REJECTS, topics.ledger_state(0)):
        watcher.subscribe(topic, inbox)
    connected(watcher)
    return Load(community, ledger_dir(tmp_path / "ledger", community, balance=BALANCE, block_ms=20), trades, inbox)


def online_since(load: Load, start: int) -> bool:
    return any(t == topics.ledger_state(0) and p.startswith(b"online") for t, p, _ in load.inbox.messages[start:])


@pytest.fixture
def start_ledger():
    """start_ledger(root, port): `spb-ledger run` as a process; any still running are killed
    after the test, whatever happened in it."""
    processes = []

    def start(root, port) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", "run", str(root), "--broker", f"127.0.0.1:{port}"],
            env=child_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # warnings are errors: a pipe left open fails whichever test collects it


def test_kill_9_mid_load_loses_nothing_and_applies_nothing_twice(tmp_path, mosquitto, make_client, start_ledger):
    load = make_load(tmp_path, mosquitto.port, make_client)
    ledger = start_ledger(load.root, mosquitto.port)
    # Its first connect makes the ledger's persistent session: from then on the broker keeps
    # transactions for it whether it runs or not.
    wait_for(lambda: online_since(load, 0), 30, "the ledger online")
    load.publish(connected(make_client(mosquitto.port, "households", max_inflight=1000)))
    for _ in load.crash_points():
        ledger.send_signal(signal.SIGKILL)
        assert ledger.wait(10) == -signal.SIGKILL
        restarted = len(load.inbox.messages)
        ledger = start_ledger(load.root, mosquitto.port)
        wait_for(lambda restarted=restarted: online_since(load, restarted), 30, "the restarted ledger online")
    load.check()
    ledger.send_signal(signal.SIGTERM)
    assert ledger.wait(20) == 0, ledger.stderr.read().decode()[-2000:]


def test_broker_restarts_mid_load_lose_nothing_and_apply_nothing_twice(tmp_path, mosquitto, make_client):
    """The ledger's connection drops with a block's acknowledgements still owed: the broker
    sends those messages again to the reconnected ledger, which must not apply them twice."""
    load = make_load(tmp_path, mosquitto.port, make_client)
    ledger = RunningLedger(load.root, mosquitto.port)
    wait_for(lambda: online_since(load, 0), 30, "the ledger online")
    load.publish(connected(make_client(mosquitto.port, "households", max_inflight=1000)))
    for _ in load.crash_points():
        mosquitto.restart()
    load.check()
    ledger.stop()
