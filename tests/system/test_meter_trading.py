"""Meters trading end to end on a real Mosquitto, with real SQLite state dirs.

CoEs exchanged between meters (in-process MeterNodes), a consumer's `spb-meter run` killed
with SIGKILL in the middle of a trade with a real `spb-ledger run`, and a meter that keeps
metering through a 60 s broker outage. Conditions are waited for with wait_for; the only
fixed wait is the outage itself.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from broker.clock import wall_ms
from deploy.provision import Community, community_genesis, provision
from edge.config import CONFIG_NAME, MeterConfig
from edge.energy import WMS_PER_WH
from edge.keyring import Batch
from edge.state_dir import MeterIdentity
from edge.store import MeterStore, TradeRow
from ledger.genesis import write_genesis
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from tests.support.bus import REPO, Inbox, child_env, connected, wait_for
from tests.support.meter import RunningMeter, in_store, spb_meter
from wire import topics
from wire.messages import Erc, Reading, Status, open_message
from wire.verify import Verifier

OPENING_UNITS = 1_000
# The market's interval in the genesis. Every trade settles only against export its seller's
# meter proved (docs/PROTOCOL.md §9.4), one export record per interval after it ends, so an
# ERC waits at most about an interval for the producer's next record.
INTERVAL_S = 5


# ---- helpers -----------------------------------------------------------------------------


def make_community(tmp_path: Path, meters: int, ledger: bool = False) -> Community:
    """`meters` provisioned meters (devcerts valid since a minute ago), the first a solar
    producer, and with `ledger` a genesis giving every household OPENING_UNITS, as
    deploy/demo.py starts a community."""
    root = tmp_path / "community"
    community = provision(
        root,
        meters=meters,
        accounts=None,
        validators=1,
        now_ms=wall_ms() - 60_000,
        sources={"m0001": "solar"},
        interval_s=INTERVAL_S,
    )
    if ledger:
        write_genesis(root, community_genesis(community, OPENING_UNITS, block_ms=200))
    return community


def meter_dir(community: Community, meter: str) -> Path:
    return community.root / "meters" / meter


def counter(state_dir: Path, name: str) -> int:
    """A meter's durable counter ('seq', 'boot', ...), read straight from its SQLite file."""
    with closing(sqlite3.connect(state_dir / "meter.db", timeout=30)) as db:
        return db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0]


def waiting_in_outbox(state_dir: Path) -> tuple[int, str]:
    """(messages waiting, dropped) as `spb-meter status` reports them."""
    done = spb_meter("status", state_dir)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("outbox"))
    # "outbox   N message(s) waiting for the broker; dropped: none"
    return int(line.split()[1]), line.rsplit("dropped: ", 1)[1]


def witness_of(batch: Batch, ca_pk: bytes, me: str) -> str:
    """The meter that vouched for `batch`, after checking its CoE: signed by a meter with a
    devcert of the community CA, valid now, for exactly this batch's root and size, and
    not signed by the batch's own meter."""
    assert batch.coe is not None, f"batch #{batch.id} of {me} has no CoE"
    coe = Verifier(cas=[ca_pk]).verify(batch.coe, wall_ms(), "coe").body
    assert (coe.root, coe.size) == (batch.root, batch.size)
    assert (batch.coe_t, batch.coe_exp) == (coe.t, coe.exp)
    witness = open_message(coe.cert, "devcert").body.meter
    assert witness != me, f"{me} vouched for its own batch #{batch.id}"
    return witness


def meter_run(state_dir: Path, port: int, *options: object) -> list[str]:
    """Module args of `spb-meter run` with an emulated MCP3008."""
    return [
        "edge.cli",
        "run",
        "--state-dir",
        str(state_dir),
        "--broker",
        f"127.0.0.1:{port}",
        "--adc",
        "fake",
        *map(str, options),
    ]


@pytest.fixture
def start_node(run_meter):
    """start_node(state_dir, config): an in-process MeterNode importing a steady 500 W, running
    (its RunningMeter: .node, .stop()); stopped at the end of the test."""

    def start(state_dir: Path, config: MeterConfig) -> RunningMeter:
        return run_meter(MeterIdentity.load(state_dir), config, lambda _elapsed: (500, 0))

    return start


@pytest.fixture
def bus(mosquitto, make_client):
    """bus(*topic_filters, name=..., clean_session=...): (Inbox, its connected BusClient), subscribed."""

    def watch(*topic_filters: str, name: str = "observer", clean_session: bool = True):
        inbox = Inbox()
        client = make_client(mosquitto.port, name, clean_session=clean_session)
        for topic_filter in topic_filters:
            client.subscribe(topic_filter, inbox)
        connected(client)
        return inbox, client

    return watch


def on_topic(inbox: Inbox, topic: str) -> list[bytes]:
    return [payload for t, payload, _ in list(inbox.messages) if t == topic]


FAST = MeterConfig(reading_s=0.5, resend_s=1)  # CoE requests and CTPs are asked again after 1 s


# ---- 1. CoEs between meters ----------------------------------------------------------------


def test_three_meters_get_their_coes_from_each_other(tmp_path, start_node, bus, caplog):
    """Three meters each make key batch #1 and get its CoE from another meter of the
    community: the CoE in each meter's store verifies against the CA, is for exactly that
    batch's root and size, was signed by a peer (never the meter itself), is byte for byte
    the `coe/resp` that peer sent on the bus, and the peer logged having witnessed it."""
    caplog.set_level(logging.INFO, logger="spb.meter")
    community = make_community(tmp_path, meters=3)
    ca = bytes.fromhex(community.ca_pk)
    ids = [m.id for m in community.meters]
    inbox, _ = bus(topics.METERS_ALL)
    nodes = {m: start_node(meter_dir(community, m), FAST).node for m in ids}

    def all_vouched():
        return all(any(b.coe for b in node.store.batches()) for node in nodes.values())

    wait_for(all_vouched, 30, lambda: {m: n.store.batches() for m, n in nodes.items()})

    witnesses = {}
    witnessed = [r.getMessage() for r in caplog.records if " witnessed a key batch of " in r.getMessage()]
    for meter, node in nodes.items():
        batches = node.store.batches()
        assert len(batches) == 1, f"{meter} made {len(batches)} batches; 64 unused keys need no second"
        witness = witnesses[meter] = witness_of(batches[0], ca, meter)
        assert witness in ids
        assert batches[0].coe in on_topic(inbox, topics.meter(meter, "coe/resp"))
        assert f"{witness} witnessed a key batch of {meter}" in witnessed
        requests = on_topic(inbox, topics.meter(witness, "coe/req"))
        assert any(open_message(r, "coereq").body.root == batches[0].root for r in requests)
    assert len({node.store.batches()[0].root for node in nodes.values()}) == 3
    assert set(witnesses.values()), "nobody witnessed anything"
    assert [
        r.getMessage() for r in caplog.records if " rejected " in r.getMessage() or " refused " in r.getMessage()
    ] == []


def test_coe_messages_left_retained_on_the_broker_are_ignored_at_every_start(tmp_path, start_node, bus, caplog):
    """§7 sends CoE requests and answers live only. A copy someone left retained is delivered
    again at every subscribe: a meter ignores it, rather than witnessing or refusing it anew at
    each start (issue 17: retained junk misleads)."""
    caplog.set_level(logging.INFO, logger="spb.meter")
    community = make_community(tmp_path, meters=2)
    ids = [m.id for m in community.meters]
    inbox, client = bus(topics.METERS_ALL)
    running = {m: start_node(meter_dir(community, m), FAST) for m in ids}
    wait_for(lambda: all(any(b.coe for b in r.node.store.batches()) for r in running.values()), 30, "both CoEs")
    left = [(t, p) for t, p, _ in list(inbox.messages) if t.endswith(("/coe/req", "/coe/resp"))]
    assert {t.rsplit("/", 1)[1] for t, _ in left} == {"req", "resp"}
    for info in [client.publish(topic, payload, retain=True) for topic, payload in left]:
        assert client.wait_acked(info, 10)
    for r in running.values():
        r.stop()
    caplog.clear()
    restarted = [start_node(meter_dir(community, m), FAST).node for m in ids]
    wait_for(lambda: all(node.bus.connected.is_set() for node in restarted), 20, "both meters back")
    # Retained copies come right after the SUBACK, before anything published later: a live
    # request (garbage, refused) is the sentinel after which every retained one was handled.
    client.publish(topics.meter(ids[0], "coe/req"), b"live junk")
    said = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
    wait_for(lambda: any("refused a CoE request" in m for m in said()), 20, lambda: f"the refusal; {said()}")
    assert [m for m in said() if " witnessed " in m or " refused " in m or " got the CoE " in m] == [
        next(m for m in said() if "refused a CoE request" in m)
    ]


def test_a_lone_meter_waits_for_its_coe_until_a_peer_comes_online(tmp_path, start_node, bus):
    """A meter with no online peer makes batch #1 and waits for its CoE: it asks nobody (a
    meter never vouches for itself), `spb-meter status` says so and `spb-meter ctp` refuses
    to trade. Once a second meter comes online, the same batch gets its CoE from it (and the
    newcomer gets its own from the first)."""
    community = make_community(tmp_path, meters=2)
    ca = bytes.fromhex(community.ca_pk)
    first_id, second_id = (m.id for m in community.meters)
    inbox, _ = bus(topics.METERS_ALL)
    first = start_node(meter_dir(community, first_id), FAST).node

    # Three readings later, the loop has looked after its key ring (once a second) several times.
    wait_for(
        lambda: len(on_topic(inbox, topics.meter(first_id, "reading"))) >= 3 and first.store.batches(),
        20,
        lambda: f"3 readings and a batch; {len(inbox.messages)} messages, {first.store.batches()}",
    )
    (waiting,) = first.store.batches()
    assert waiting.coe is None
    assert [t for t, _, _ in inbox.messages if t.endswith(("/coe/req", "/coe/resp"))] == []
    status = spb_meter("status", meter_dir(community, first_id))
    assert "batch #1: 64 of 64 one-time keys free, waiting for a CoE" in status.stdout, status.stdout
    refused = spb_meter("ctp", meter_dir(community, first_id), community.meters[1].account_pk, 1, 1)
    assert refused.returncode == 1 and "no key batch has a CoE yet" in refused.stderr, refused

    second = start_node(meter_dir(community, second_id), FAST).node
    wait_for(
        lambda: first.store.batches()[0].coe and second.store.batches() and second.store.batches()[0].coe,
        30,
        lambda: f"both CoEs: {first.store.batches()} {second.store.batches()}",
    )
    (vouched,) = first.store.batches()
    assert (vouched.id, vouched.root) == (waiting.id, waiting.root)
    assert witness_of(vouched, ca, first_id) == second_id
    assert witness_of(second.store.batches()[0], ca, second_id) == first_id


def test_a_batch_three_quarters_reserved_brings_the_next_batch_and_its_coe(tmp_path, start_node, bus):
    """With `batch_size = 4` in DIR/config.toml, two CTPs (50 % of the keys) make no new
    batch, the third (75 %) makes batch #2 at once, and the meter fetches its CoE from its
    peer. The three CTPs reserved keys 0, 1, 2 of batch #1, which stays in use."""
    community = make_community(tmp_path, meters=2)
    ca = bytes.fromhex(community.ca_pk)
    buyer_id, peer_id = (m.id for m in community.meters)
    buyer_dir = meter_dir(community, buyer_id)
    (buyer_dir / CONFIG_NAME).write_text("batch_size = 4\n")
    config = MeterConfig.load(buyer_dir, reading_s=0.5, resend_s=1)
    assert config.batch_size == 4
    inbox, _ = bus(topics.TX_CTP)
    buyer = start_node(buyer_dir, config).node
    start_node(meter_dir(community, peer_id), FAST)
    wait_for(lambda: (b := buyer.store.batches()) and b[0].coe, 30, lambda: buyer.store.batches())

    ctp_ids = []
    for k in (1, 2, 3):
        done = spb_meter("ctp", buyer_dir, community.meters[1].account_pk, 1, 1, "--expiry", 600)
        assert done.returncode == 0, done.stderr
        ctp_ids.append(bytes.fromhex(done.stdout.strip()))
        raw = buyer.store.trade(ctp_ids[-1]).ctp
        # No ledger answers, so the meter sends the CTP again after resend_s, from the
        # housekeeping that looks after the key ring just after: seen twice, that ran.
        wait_for(lambda raw=raw: on_topic(inbox, topics.TX_CTP).count(raw) >= 2, 20, f"CTP #{k} sent and sent again")
        if k < 3:
            assert len(buyer.store.batches()) == 1, f"a new batch after {k} of 4 keys reserved"

    wait_for(lambda: len(b := buyer.store.batches()) == 2 and b[1].coe, 30, lambda: buyer.store.batches())
    first, second = buyer.store.batches()
    assert (first.size, first.next_idx, second.size, second.next_idx) == (4, 3, 4, 0)
    assert second.root != first.root and second.made >= first.made
    assert witness_of(first, ca, buyer_id) == witness_of(second, ca, buyer_id) == peer_id
    assert [(buyer.store.trade(i).batch, buyer.store.trade(i).idx) for i in ctp_ids] == [(1, 0), (1, 1), (1, 2)]
    assert all(open_message(buyer.store.trade(i).ctp, "ctp").body.meter == first.root for i in ctp_ids)


def test_a_meter_never_asks_a_peer_whose_state_is_offline_for_a_coe(tmp_path, start_node, bus):
    """docs/PROTOCOL.md §4: a CoE is asked of a randomly chosen *online* meter. A peer that ran
    once and went offline (retained birth, retained state `offline`) is no candidate: not
    for a meter seeing it for the first time, nor for that meter restarted with a batch
    still waiting for its CoE and the peer's birth remembered in its store. Only meters
    whose state is `online` may be asked (PeerTable.online: "peers whose last state was
    `online`")."""
    community = make_community(tmp_path, meters=2)
    a_id, b_id = (m.id for m in community.meters)
    inbox, _ = bus(topics.METERS_ALL)
    b = start_node(meter_dir(community, b_id), FAST)
    wait_for(lambda: on_topic(inbox, topics.meter(b_id, "reading")), 20, "a reading of the peer")
    b.stop()
    assert on_topic(inbox, topics.meter(b_id, "state"))[-1] == topics.OFFLINE

    a = start_node(meter_dir(community, a_id), FAST)
    wait_for(
        lambda: (
            (p := a.node.peers.peers.get(b_id))
            and not p.online
            and a.node.store.batches()
            and a.node.store.peer_births()
        ),
        20,
        lambda: f"{a_id} to see {b_id} offline: {a.node.peers.peers}",
    )
    a.stop()
    (waiting,) = in_store(meter_dir(community, a_id), MeterStore.batches)
    assert waiting.coe is None

    a = start_node(meter_dir(community, a_id), FAST)  # restarted, the peer still offline
    readings = len(on_topic(inbox, topics.meter(a_id, "reading")))
    # A request queued at the start goes out before the readings that follow it (one outbox, in order).
    wait_for(
        lambda: (
            len(on_topic(inbox, topics.meter(a_id, "reading"))) >= readings + 3
            and (p := a.node.peers.peers.get(b_id))
            and not p.online
        ),
        20,
        lambda: f"3 readings and {b_id} known offline: {a.node.peers.peers}",
    )
    assert a.node.peers.online() == []
    assert on_topic(inbox, topics.meter(b_id, "coe/req")) == [], f"{a_id} asked {b_id}, offline, for a CoE"


# ---- 2. kill -9 of a meter in the middle of a trade -------------------------------------------

TRADE_WH = 8
KILL_AT_WH = 1  # killed with at least this much delivered...
SLOW_W = 720  # ...by a consumer importing 0.2 Wh/s: 35 s from the kill point to the trade's end
FAST_W = 5000  # the restarted consumer delivers the rest at 1.4 Wh/s, not to drag the test out
LATER_WH = 2  # a second trade, placed on the restarted meter


def test_meter_killed_mid_trade_settles_after_restart_with_one_erc_and_no_lost_seq(tmp_path, mosquitto, bus, procs):
    """A consumer's `spb-meter run` is killed with SIGKILL while counting the energy of a
    held trade, then restarted on the same state dir. The trade settles (status verified
    against the validator key, caused by the ERC), exactly one ERC was ever signed for it,
    its one-time key (pk, idx) signs no other ERC of the meter, the money moved once, the
    readings' seqs 1..max all arrive with none reused (re-sends are the same bytes) and the
    restarted meter's seqs continue above the killed one's, and `spb-ledger audit` passes.
    A second trade placed on the restarted meter settles with the next one-time key."""
    community = make_community(tmp_path, meters=2, ledger=True)
    root, port = community.root, mosquitto.port
    producer, consumer = community.meters
    ca = bytes.fromhex(community.ca_pk)
    verifier = Verifier(cas=[ca], validators=[bytes.fromhex(v.pk) for v in community.validators])
    device_pk = bytes.fromhex(consumer.device_pk)
    consumer_dir = meter_dir(community, consumer.id)
    # Everything the consumer ever sends, seen by a persistent session from before any start.
    inbox, _ = bus(
        topics.TX_ERC,
        topics.STATUS_ALL,
        topics.REJECTS,
        topics.ledger_state(0),
        topics.meter(consumer.id, "reading"),
        name="auditor",
        clean_session=False,
    )

    ledger = procs.start("ledger", "ledger.cli", "run", root, "--broker", f"127.0.0.1:{port}")
    options = ("--reading-s", "0.5", "--resend-s", "2")
    procs.start(producer.id, *meter_run(meter_dir(community, producer.id), port, "--fake-w=-4000", *options))
    meter = procs.start(consumer.id, *meter_run(consumer_dir, port, "--fake-w", SLOW_W, *options))
    wait_for(
        lambda: any(p.startswith(b"online") for p in on_topic(inbox, topics.ledger_state(0))),
        30,
        lambda: f"the ledger online{procs.logs()}",
    )
    wait_for(
        lambda: any(b.coe for b in in_store(consumer_dir, MeterStore.batches)),
        30,
        lambda: f"the consumer's CoE{procs.logs()}",
        interval=0.1,
    )

    done = spb_meter("ctp", consumer_dir, producer.account_pk, 30, TRADE_WH, "--expiry", 120)
    assert done.returncode == 0, done.stderr
    ctp_id = bytes.fromhex(done.stdout.strip())

    def states(ctp: bytes = ctp_id) -> list[Status]:
        return [verifier.verify(p, wall_ms(), "status").body for p in on_topic(inbox, topics.status(ctp))]

    def trade(ctp: bytes = ctp_id) -> TradeRow:
        return in_store(consumer_dir, lambda store: store.trade(ctp))

    wait_for(lambda: any(s.state == "held" for s in states()), 30, lambda: f"held{procs.logs()}")
    wait_for(
        lambda: trade().delivered_wms >= KILL_AT_WH * WMS_PER_WH,
        30,
        lambda: f"{KILL_AT_WH} Wh delivered: {trade()}{procs.logs()}",
        interval=0.05,
    )
    meter.send_signal(signal.SIGKILL)
    assert meter.wait(10) == -signal.SIGKILL
    killed_at = wall_ms()
    at_kill = trade()
    # The delivery's pace leaves the kill 35 s to land before the trade completes: only a
    # test stalled that long between seeing 1 Wh and the kill would miss it.
    assert at_kill.state == "held" and at_kill.erc is None, f"killed too late to prove anything: {at_kill}"
    assert KILL_AT_WH * WMS_PER_WH <= at_kill.delivered_wms < TRADE_WH * WMS_PER_WH
    last_seq_before = counter(consumer_dir, "seq")
    assert counter(consumer_dir, "boot") == 1

    meter = procs.start(consumer.id, *meter_run(consumer_dir, port, "--fake-w", FAST_W, *options))
    done = spb_meter("ctp", consumer_dir, producer.account_pk, 5, LATER_WH, "--expiry", 120)
    assert done.returncode == 0, done.stderr
    later_id = bytes.fromhex(done.stdout.strip())
    for ctp in (ctp_id, later_id):
        wait_for(
            lambda ctp=ctp: any(s.state == "settled" for s in states(ctp)),
            60,
            lambda ctp=ctp: f"{ctp.hex()} settled{procs.logs()}",
        )
    meter.send_signal(signal.SIGTERM)  # a clean stop sends its last reading and empties its outbox
    assert meter.wait(20) == 0, procs.logs()
    ledger.send_signal(signal.SIGTERM)
    assert ledger.wait(20) == 0, procs.logs()
    assert counter(consumer_dir, "boot") == 2

    # The trade settled by its one ERC.
    settled = trade()
    assert settled.state == "settled" and settled.erc is not None
    assert {s.state for s in states()} == {"held", "settled"}
    (by_erc,) = {s.msg for s in states() if s.state == "settled"}
    assert by_erc == hashlib.sha256(settled.erc).digest()
    ercs = {p: verifier.verify(p, wall_ms(), "erc").body for p in on_topic(inbox, topics.TX_ERC)}
    ours: dict[bytes, Erc] = {p: e for p, e in ercs.items() if e.ctp == ctp_id}
    assert list(ours) == [settled.erc], f"{len(ours)} different ERCs for one trade"
    erc = ours[settled.erc]
    assert erc.wh >= TRADE_WH and erc.idx == settled.idx
    batch = in_store(consumer_dir, lambda store: store.batch(settled.batch))
    assert erc.pk == bytes(batch.key(settled.idx).verify_key)
    roots = {b.root for b in in_store(consumer_dir, MeterStore.batches)}
    keys = [(e.pk, e.idx) for e in ercs.values() if verifier.coe_of(e).root in roots]
    assert len(keys) == len(set(keys)), f"a one-time key signed two ERCs: {keys}"
    later = trade(later_id)
    assert later.state == "settled" and [e.ctp for e in ercs.values()].count(later_id) == 1
    assert sorted(keys) == sorted([(erc.pk, 0), (ercs[later.erc].pk, 1)]) and erc.pk != ercs[later.erc].pk
    assert (settled.batch, settled.idx, later.batch, later.idx) == (1, 0, 1, 1)
    # `oversold`: an ERC that came before the producer's export record for it, sent again (§9.4).
    rejected = [open_message(r, "reject").body.reason for r in on_topic(inbox, topics.REJECTS)]
    assert set(rejected) <= {"duplicate", "oversold"}, f"the ledger rejected a message: {rejected}"

    # Readings: every seq arrives, none reused, the restarted meter's continue above.
    def readings() -> list[tuple[Reading, bytes]]:
        return [
            (verifier.verify(p, wall_ms(), "reading", device_key=device_pk).body, p)
            for p in on_topic(inbox, topics.meter(consumer.id, "reading"))
        ]

    last_seq = counter(consumer_dir, "seq")
    wait_for(
        lambda: {r.seq for r, _ in readings()} >= set(range(1, last_seq + 1)),
        20,
        lambda: f"seqs 1..{last_seq}; got {sorted({r.seq for r, _ in readings()})}",
        interval=0.1,
    )
    seen = readings()
    payloads: dict[int, set[bytes]] = {}
    for reading, raw in seen:
        payloads.setdefault(reading.seq, set()).add(raw)
    assert set(payloads) == set(range(1, last_seq + 1))
    assert {seq: len(p) for seq, p in payloads.items() if len(p) > 1} == {}, "a seq signed twice"
    before = [r for r, _ in seen if r.seq <= last_seq_before]
    after = [r for r, _ in seen if r.seq > last_seq_before]
    assert before and after and max(r.t for r in before) <= killed_at <= min(r.t for r in after)
    assert min(r.seq for r in after) == last_seq_before + 1, "the restarted meter skipped or reused seqs"
    assert last_seq_before < last_seq
    by_seq = sorted({r.seq: r for r, _ in seen}.values(), key=lambda r: r.seq)
    assert all(a.wh_in <= b.wh_in for a, b in itertools.pairwise(by_seq)), "cumulative Wh went backwards"

    # The money moved once, the chain audits, and nothing is left to send.
    identity = ValidatorIdentity.load(root, 0, with_key=False)
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    try:
        accounts = store.accounts()
    finally:
        store.close()
    assert accounts[bytes.fromhex(consumer.account_pk)] == (OPENING_UNITS - 35, 0)
    assert accounts[bytes.fromhex(producer.account_pk)] == (OPENING_UNITS + 35, 0)
    audited = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "audit", str(root)],
        cwd=REPO,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert audited.returncode == 0, audited.stdout + audited.stderr
    assert "2 trades, 2 CTPs" in audited.stdout, audited.stdout
    assert waiting_in_outbox(consumer_dir) == (0, "none")


# ---- 3. the broker away for a minute -------------------------------------------------------

OUTAGE_S = 60
READING_S = 1
# A meter that fell behind its period (a loaded machine) skips to the next one rather than
# signing a burst: counts of readings and energy are checked against half the clock's worth,
# which a meter that stopped metering misses by far and a busy machine never does.
PACE = 0.5


def test_a_minute_without_the_broker_loses_no_reading_and_keeps_their_order(tmp_path, mosquitto, bus, procs):
    """`spb-meter run` (a reading a second) keeps metering while Mosquitto is stopped for
    60 s and started again on the same port and data dir. Its readings wait in the SQLite
    outbox meanwhile; afterwards a persistent-session observer (whose session the broker
    kept through the restart) has every seq 1..N, first arrivals in increasing order, a
    duplicate only as a byte-identical re-send, N at least one every two seconds (PACE);
    the outbox drains to 0 while the meter runs, nothing was dropped, and the readings
    signed during the outage carry their own times and rising totals."""
    community = make_community(tmp_path, meters=1)
    meter_id = community.meters[0].id
    state_dir = meter_dir(community, meter_id)
    verifier = Verifier(cas=[bytes.fromhex(community.ca_pk)])
    device_pk = bytes.fromhex(community.meters[0].device_pk)
    topic = topics.meter(meter_id, "reading")
    inbox, observer = bus(topic, name="observer", clean_session=False)

    started = time.monotonic()
    meter = procs.start(meter_id, *meter_run(state_dir, mosquitto.port, "--fake-w", "1800", "--reading-s", READING_S))
    wait_for(lambda: len(on_topic(inbox, topic)) >= 3, 30, lambda: f"3 readings{procs.logs()}")

    mosquitto.stop()
    down_wall, down = wall_ms(), time.monotonic()
    # The meter goes on: its readings pile up in the outbox (a condition, so waited for)...
    wait_for(
        lambda: in_store(state_dir, MeterStore.outbox_size) >= OUTAGE_S // 2,
        OUTAGE_S,
        lambda: f"readings queued; outbox {in_store(state_dir, MeterStore.outbox_size)}{procs.logs()}",
        interval=0.5,
    )
    # ...and the outage lasts its minute whatever happens meanwhile: a scenario, not a wait.
    time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
    assert meter.poll() is None, procs.logs()
    queued = in_store(state_dir, MeterStore.outbox_size)
    up_wall = wall_ms()
    mosquitto.start(mosquitto.port, mosquitto.data_dir)

    wait_for(observer.connected.is_set, 20, "the observer back")
    assert observer.session_present, "Mosquitto lost the observer's persistent session over the restart"
    # The meter's reconnect backoff is up to 30 s; then the outbox drains (readings keep coming).
    wait_for(
        lambda: waiting_in_outbox(state_dir)[0] == 0,
        60,
        lambda: f"the outbox drained: {waiting_in_outbox(state_dir)}{procs.logs()}",
        interval=0.2,
    )
    meter.send_signal(signal.SIGTERM)
    assert meter.wait(20) == 0, procs.logs()
    elapsed = time.monotonic() - started
    assert waiting_in_outbox(state_dir) == (0, "none")

    last = counter(state_dir, "seq")
    wait_for(
        lambda: {open_message(p, "reading").body.seq for p in on_topic(inbox, topic)} >= set(range(1, last + 1)),
        20,
        lambda: f"seqs 1..{last}",
    )
    firsts: list[int] = []
    sent: dict[int, bytes] = {}
    readings = []
    for raw in on_topic(inbox, topic):
        reading = verifier.verify(raw, wall_ms(), "reading", device_key=device_pk).body
        if reading.seq in sent:
            assert sent[reading.seq] == raw, f"seq {reading.seq} arrived as two different readings"
            continue
        sent[reading.seq] = raw
        firsts.append(reading.seq)
        readings.append(reading)
    assert firsts == list(range(1, last + 1)), f"first arrivals out of order or missing: {firsts}"
    assert last >= PACE * elapsed / READING_S, f"{last} readings in {elapsed:.0f} s"
    during = [r for r in readings if down_wall < r.t < up_wall]
    assert len(during) >= PACE * OUTAGE_S / READING_S, f"{len(during)} readings signed during the outage"
    assert queued >= len(during) - 1
    assert all(a.t <= b.t and a.wh_in <= b.wh_in for a, b in itertools.pairwise(readings))
    assert readings[-1].wh_in >= int(PACE * 1800 * elapsed / 3600)
