"""A fuzzed run over a real Mosquitto: random valid, damaged, duplicated, misrouted and
reordered traffic into `spb-ledger run`, then `spb-ledger audit` on what it wrote."""

from __future__ import annotations

import random
import subprocess
import sys

from broker.clock import wall_ms
from broker.runtime import wait_or_kill
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from tests.support.ledger import rejections, statuses
from tests.support.wire import flip_bit
from wire import topics
from wire.cose import message_hash

HOUSEHOLDS = 5
BALANCE = 500


def traffic(community: SimCommunity, rng: random.Random, now: int) -> list[tuple[str, bytes]]:
    """(topic, payload) pairs: trades in every fate, then damaged and misrouted copies, shuffled
    within a window so some ERCs and cancels overtake their CTP."""
    out = []
    for _ in range(120):
        payer, payee = rng.sample(range(HOUSEHOLDS), 2)
        ctp = community.ctp(
            payer,
            payee,
            amount=rng.randint(0, 200),
            wh=rng.randint(1, 9),
            exp=now + rng.choice([-1_000, 1_500, 600_000]),
        )
        out.append((topics.TX_CTP, ctp))
        fate = rng.random()
        if fate < 0.5:
            out.append((topics.TX_ERC, community.erc(ctp, wh=rng.choice([0, 20]) if fate < 0.1 else None)))
        elif fate < 0.6:
            out.append((topics.TX_CANCEL, community.cancel(ctp, by=rng.choice([None, payee]))))
        if rng.random() < 0.2:
            out.append(rng.choice(out))  # an exact copy, now or later
    for topic, payload in rng.sample(out, 40):
        damaged = flip_bit(payload, rng.randrange(len(payload) * 8))
        out.append((rng.choice([topic, topics.TX_CTP, topics.TX_ERC, topics.TX_CANCEL]), damaged))
    for i in range(0, len(out) - 4, 4):  # local reordering
        window = out[i : i + 4]
        rng.shuffle(window)
        out[i : i + 4] = window
    return out


def test_a_fuzzed_run_over_the_bus_audits_clean(tmp_path, mosquitto, make_client):
    rng = random.Random(20261121)
    now = wall_ms()
    community = SimCommunity(HOUSEHOLDS, now)
    root = community.ledger_dir(tmp_path / "ledger", BALANCE, block_ms=30)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic in (topics.STATUS_ALL, topics.REJECTS, topics.ledger_state(0)):
        watcher.subscribe(topic, inbox)
    connected(watcher)
    ledger = subprocess.Popen(
        [sys.executable, "-m", "ledger.cli", "run", str(root), "--broker", f"127.0.0.1:{mosquitto.port}"],
        env=child_env(),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: (topics.ledger_state(0), b"online 0", False) in inbox.messages, 30, "the ledger online")
        household = connected(make_client(mosquitto.port, "households"))
        # Expiries count from now, not from before the ledger started: a slow start (a loaded
        # CI machine) must not expire the short CTPs before they can be held.
        sent = traffic(community, rng, wall_ms())
        for topic, payload in sent:
            household.publish(topic, payload)
        # One publisher, decided in order: once this last message is rejected, all were decided
        # (a cancel of a CTP never sent is decided in a block; junk is refused before any block).
        barrier = community.cancel(community.ctp(0, 1, amount=1, wh=1, exp=now + 3_600_000))
        household.publish(topics.TX_CANCEL, barrier)
        wait_for(lambda: any(r.msg == message_hash(barrier) for r in rejections(inbox)), 60, "the barrier's reject")
        # Let expiries fall due (the 1.5 s CTPs), then stop.
        wait_for(lambda: any(s.state == "refunded" and s.msg is None for s in statuses(inbox)), 30, "an expiry refund")
    finally:
        ledger.terminate()
        wait_or_kill(ledger, 20)
    assert ledger.returncode == 0, ledger.stderr.read().decode()[-2000:]

    audit = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "audit", str(root)],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO,
        timeout=120,
    )
    assert audit.returncode == 0 and audit.stdout.startswith("audit ok"), audit.stdout + audit.stderr
    identity = ValidatorIdentity.load(root, 0, with_key=False)
    accounts = LedgerStore(identity.db_path, identity.genesis, readonly=True).accounts()
    assert sum(b + h for b, h in accounts.values()) == HOUSEHOLDS * BALANCE
    # The fuzz reached every fate: settled, refunded both ways, rejected for many reasons.
    states = {s.state for s in statuses(inbox)}
    assert {"held", "settled", "refunded", "rejected"} <= states
    reasons = {r.reason for r in rejections(inbox)}  # which stateful ones depends on how blocks fell
    assert {"decode", "type", "signature", "expired"} <= reasons and len(reasons) >= 8, reasons
