"""A fuzzed run over a real Mosquitto: random valid, damaged, duplicated, misrouted and
reordered traffic into `spb-ledger run`, then `spb-ledger audit` on what it wrote."""

from __future__ import annotations

import random
import subprocess
import sys

from broker.clock import wall_ms
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from tests.support.ledger import rejections, statuses, wait_online
from tests.support.wire import flip_bit
from wire import topics
from wire.cose import message_hash
from wire.messages import open_message

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


def expiry_refund(community: SimCommunity, household, inbox: Inbox) -> None:
    """Return once a probe CTP was held and then refunded at its expiry by the clock alone
    (no `msg`), so the audited chain has such a refund whatever the machine's speed: the
    probe asks for amount 0 (no funds needed) and, each time the ledger decided it only
    after it expired (a busy machine), goes again with an expiry twice as far."""
    window_ms = 1_500
    while True:
        probe = community.ctp(0, 1, amount=0, wh=1, exp=wall_ms() + window_ms)
        probe_id = open_message(probe, "ctp").body.id
        household.publish(topics.TX_CTP, probe)
        first = wait_for(
            lambda probe_id=probe_id: next((s for s in statuses(inbox) if s.ctp == probe_id), None),
            60,
            "the probe's status",
        )
        if first.state == "held":
            break
        assert (first.state, first.reason) == ("rejected", "expired"), first
        window_ms *= 2
    wait_for(
        lambda: any(s.ctp == probe_id and s.state == "refunded" and s.msg is None for s in statuses(inbox)),
        60 + window_ms / 1000,
        "the probe refunded at its expiry",
    )


def test_a_fuzzed_run_over_the_bus_audits_clean(tmp_path, mosquitto, make_client, procs):
    rng = random.Random(20261121)
    now = wall_ms()
    community = SimCommunity(HOUSEHOLDS, now)
    root = community.ledger_dir(tmp_path / "ledger", BALANCE, block_ms=30)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic in (topics.STATUS_ALL, topics.REJECTS, topics.ledger_state(0)):
        watcher.subscribe(topic, inbox)
    connected(watcher)
    ledger = procs.start("ledger", "ledger.cli", "run", root, "--broker", f"127.0.0.1:{mosquitto.port}")
    wait_online(inbox, logs=procs.logs)
    household = connected(make_client(mosquitto.port, "households"))
    # Expiries count from now, not from before the ledger started: a slow start (a loaded
    # CI machine) must not expire the short CTPs before they can be held.
    sent = traffic(community, rng, wall_ms())
    for topic, payload in sent:
        household.publish(topic, payload)
    # One publisher, decided in order: once this last message is rejected, all were decided
    # (a cancel of a CTP never sent is decided in a block; junk is refused before any block).
    barrier = community.cancel(community.ctp(0, 1, amount=1, wh=1, exp=wall_ms() + 3_600_000))
    household.publish(topics.TX_CANCEL, barrier)
    wait_for(lambda: any(r.msg == message_hash(barrier) for r in rejections(inbox)), 60, "the barrier's reject")
    expiry_refund(community, household, inbox)
    procs.stop(ledger)

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
