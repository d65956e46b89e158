"""`kill -9` of a real `spb-ledger run` in the middle of a load, then restart: nothing
applied twice, nothing lost, the same balances, and an audit that passes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections import Counter

from broker import topics
from broker.clock import wall_ms
from broker.messages import open_message
from deploy.simulate import SimCommunity, pk
from ledger.audit import audit
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from tests.helpers import REPO, Inbox, child_env, connected, wait_for
from tests.ledger_helpers import ledger_dir, rejections, statuses

TRADES = 1200
KILLS = 3


def start_ledger(root, port) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ledger.cli", "run", str(root), "--broker", f"127.0.0.1:{port}"],
                            env=child_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_kill_9_mid_load_loses_nothing_and_applies_nothing_twice(tmp_path, mosquitto, make_client):
    now = wall_ms()
    community = SimCommunity(8, now)
    root = ledger_dir(tmp_path / "ledger", community, balance=100_000, block_ms=20)
    trades = []  # (ctp, erc, payer, payee, amount)
    for i in range(TRADES):
        payer, payee = i % 8, (i * 3 + 1) % 8
        payee = payee if payee != payer else (payee + 1) % 8
        amount = 1 + i % 50
        ctp = community.ctp(payer, payee, amount=amount, wh=3, exp=now + 3_600_000)
        trades.append((ctp, community.erc(ctp), payer, payee, amount))

    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    watcher.subscribe(topics.STATUS_ALL, inbox)
    watcher.subscribe(topics.REJECTS, inbox)
    watcher.subscribe(topics.LEDGER_STATE, inbox)
    connected(watcher)
    ledger = start_ledger(root, mosquitto.port)
    # Its first connect makes the ledger's persistent session: from then on the broker keeps
    # transactions for it whether it runs or not.
    wait_for(lambda: (topics.LEDGER_STATE, b"online 0", False) in inbox.messages, 30, "the ledger online")
    households = connected(make_client(mosquitto.port, "households", max_inflight=1000))
    for ctp, erc, *_ in trades:  # each ERC after its CTP: one publisher, so the broker keeps the order
        households.publish(topics.TX_CTP, ctp)
        households.publish(topics.TX_ERC, erc)

    def settled() -> int:
        return sum(s.state == "settled" for s in statuses(inbox))

    def settled_ids() -> set[bytes]:
        return {s.ctp for s in statuses(inbox) if s.state == "settled"}

    def online_since(start: int) -> bool:
        return any(t == topics.LEDGER_STATE and p.startswith(b"online") for t, p, _ in inbox.messages[start:])

    unfinished_kills = 0
    for kill in range(1, KILLS + 1):  # kill at about 1/4, 2/4 and 3/4 of the load
        wait_for(lambda: settled() >= kill * TRADES // (KILLS + 1), 60,
                 lambda: f"{kill * TRADES // (KILLS + 1)} settled; have {settled()}")
        ledger.send_signal(signal.SIGKILL)
        assert ledger.wait(10) == -signal.SIGKILL
        unfinished_kills += len(settled_ids()) < TRADES
        restarted = len(inbox.messages)
        ledger = start_ledger(root, mosquitto.port)
        wait_for(lambda: online_since(restarted), 30, "the restarted ledger online")
    assert unfinished_kills, "every kill came after the load was done: the test proved nothing"
    wait_for(lambda: len(settled_ids()) == TRADES, 60, lambda: f"all {TRADES} settled; have {len(settled_ids())}")
    ledger.send_signal(signal.SIGTERM)
    assert ledger.wait(20) == 0, ledger.stderr.read().decode()[-2000:]

    # Nothing lost and nothing twice: every trade moved its amount exactly once.
    expected = {pk(h.account): 100_000 for h in community.households}
    for _, _, payer, payee, amount in trades:
        expected[pk(community.households[payer].account)] -= amount
        expected[pk(community.households[payee].account)] += amount
    identity = ValidatorIdentity.load(root, 0, with_key=False)
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    assert store.accounts() == {account: (units, 0) for account, units in expected.items()}
    assert len(store.trades()) == TRADES
    report = audit(store)
    assert report.trades == TRADES and report.ctps == TRADES
    # A message redelivered after a kill was acknowledged again: a `duplicate`, never applied
    # again; nothing was rejected for any other reason.
    assert {r.reason for r in rejections(inbox)} <= {"duplicate"}
    held = Counter(s.ctp for s in statuses(inbox) if s.state == "held")
    assert set(held) == {open_message(ctp, "ctp").body.id for ctp, *_ in trades}
    assert {s.h for s in statuses(inbox) if s.state == "settled"} <= set(range(1, report.height + 1))
