"""What one message, and one sender, can cost a validator (issue 13, decision 0008): the
door, the pool's shares, forwarding once, capped blocks, and consensus messages that fit
the broker's size limit. Pure: replicas are driven directly, as ledger.sim drives them."""

from __future__ import annotations

import pytest

from broker.runtime import MAX_INFLIGHT, MESSAGE_SIZE_LIMIT
from ledger import consensus as c
from ledger import door, sim
from ledger.block import decode_inputs, encode_inputs
from ledger.draft import Draft
from ledger.replica import BLOCK_OVERHEAD, INPUT_OVERHEAD, Refused, Replica, Send, Timing
from ledger.state import LedgerState
from ledger.workload import SimCommunity
from wire.cose import MAX_MESSAGE, message_hash
from wire.reasons import BUSY
from wire.verify import Verifier

NOW = 1_800_000_000_000
N = 4
DEFAULT = Timing()


@pytest.fixture(scope="module")
def community() -> SimCommunity:
    return SimCommunity(4, NOW, seed=b"bounded inputs")


def replicas(community: SimCommunity, timing: Timing = DEFAULT, n: int = N) -> list[Replica]:
    """n validators of a fresh ledger, each as if it had just proposed (so none proposes
    before block_ms has passed)."""
    genesis = community.genesis(10_000, validators=n)
    out = []
    for i in range(n):
        verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
        r = Replica(LedgerState(genesis), verifier, i, community.validator_keys[i], lambda h: None, timing, now=NOW)
        r.last_proposal = NOW
        out.append(r)
    return out


def one(community: SimCommunity, timing: Timing = DEFAULT) -> Replica:
    """A validator of four that proposes nothing at height 1: only its pool moves."""
    return replicas(community, timing)[0]


def ctps(community: SimCommunity, count: int, payer: int = 0) -> list[bytes]:
    return [community.ctp(payer, (payer + 1) % 4, 1, 1, exp=NOW + 3_600_000) for _ in range(count)]


def refused(actions: list) -> list[Refused]:
    return [a for a in actions if isinstance(a, Refused)]


def sent(r: Replica, actions: list, kind: str) -> list[c.Signed]:
    """The consensus messages of one kind among replica r's actions."""
    messages = (c.open_signed(a.payload, r.validators) for a in actions if isinstance(a, Send))
    return [m for m in messages if m.kind == kind]


# -- the door --


@pytest.mark.parametrize(
    ("typ", "make", "reason"),
    [
        ("ctp", lambda com: b"\x00not cbor", "decode"),
        ("ctp", lambda com: b"\xa0" * (MAX_MESSAGE + 1), "decode"),  # too big: refused before it is decoded
        ("erc", lambda com: ctps(com, 1)[0], "type"),  # a CTP on the ERC topic
        ("ctp", lambda com: ctps(com, 1)[0][:-1] + b"\x00", "signature"),
    ],
)
def test_what_its_bytes_reject_is_refused_at_the_door_and_announced_once(community, typ, make, reason):
    raw = make(community)
    group = replicas(community)
    answers = [refused(r.submit(typ, raw, NOW)) for r in group]
    assert all(len(a) == 1 and a[0].reason == reason for a in answers), answers
    announcers = [i for i, a in enumerate(answers) if a[0].announce]
    assert announcers == [door.announcer(message_hash(raw), N)], "one validator publishes the reject"
    assert not any(r.pool for r in group)


def test_an_erc_the_door_cannot_verify_at_its_clock_is_left_to_its_block(community):
    """Whether a devcert or CoE is valid depends on the time: the block time decides that, so
    the door pools such an ERC, in a share of its own."""
    erc = community.erc(ctps(community, 1)[0])
    later = NOW + 3 * 365 * 86_400_000  # the witness's devcert has expired
    r = one(community)
    assert refused(r.submit("erc", erc, later)) == []
    assert r.pooled_by == {door.UNVERIFIED: 1}


def test_a_sender_beyond_its_share_is_busy_and_others_still_get_in(community):
    r = one(community, Timing(pool_per_sender=3))
    answers = [refused(r.submit("ctp", raw, NOW)) for raw in ctps(community, 5, payer=0)]
    assert [a[0].reason if a else None for a in answers] == [None, None, None, BUSY, BUSY]
    assert refused(r.submit("ctp", ctps(community, 1, payer=1)[0], NOW)) == []
    assert len(r.pool) == 4


def test_the_pool_as_a_whole_is_bounded(community):
    r = one(community, Timing(pool_max=4))
    answers = [refused(r.submit("ctp", raw, NOW)) for payer in range(3) for raw in ctps(community, 2, payer)]
    assert [a[0].reason for a in answers if a] == [BUSY, BUSY] and len(r.pool) == 4


def test_a_busy_message_is_not_remembered_so_it_gets_in_once_there_is_room(community):
    timing = Timing(pool_per_sender=1)
    r = replicas(community, timing, n=1)[0]
    first, second = ctps(community, 2)
    r.submit("ctp", first, NOW)
    assert refused(r.submit("ctp", second, NOW))[0].reason == BUSY
    r.tick(NOW + timing.block_ms)  # the block that decides `first`
    assert r.state.height == 1 and not r.pool
    assert refused(r.submit("ctp", second, NOW + timing.block_ms)) == []


def test_forgeries_do_not_take_another_senders_share(community):
    """The door checks a signature before it gives a message a place: forged CTPs naming
    household 0 as payer are refused `signature`, and household 0's own still get in."""
    r = one(community, Timing(pool_per_sender=2))
    forged = [raw[:-1] + bytes([raw[-1] ^ 1]) for raw in ctps(community, 5)]
    assert {a.reason for raw in forged for a in refused(r.submit("ctp", raw, NOW))} == {"signature"}
    assert [refused(r.submit("ctp", raw, NOW)) for raw in ctps(community, 2)] == [[], []]


def test_a_burst_beyond_a_share_costs_no_signature_check(community, monkeypatch):
    r = one(community, Timing(pool_per_sender=1))
    r.submit("ctp", ctps(community, 1)[0], NOW)
    checks = []
    monkeypatch.setattr(door, "check", lambda *args: checks.append(args))
    assert {a.reason for raw in ctps(community, 50) for a in refused(r.submit("ctp", raw, NOW))} == {BUSY}
    assert checks == []


# -- forwarding --


def test_a_pending_transaction_is_forwarded_by_one_validator_then_less_and_less_often(community):
    """Its announcer forwards it after forward_ms; the others, whose turn comes later, see
    that forward and do not send it again; the next forward waits twice as long."""
    timing = Timing(round_ms=10**9)  # no round ends: nothing is decided, the transaction stays pending
    f = timing.forward_ms
    group = replicas(community, timing)
    raw = ctps(community, 1)[0]
    key = ("ctp", message_hash(raw))
    for r in group:
        assert refused(r.submit("ctp", raw, NOW)) == []
    group[1].proposed_in.add(0)  # height 1's proposer stays silent
    first = door.announcer(key[1], N)
    forwards: dict[int, list[int]] = {}
    for t in range(NOW + 100, NOW + 20 * f, 100):
        for k in range(N):
            i = (first + k) % N
            for m in sent(group[i], group[i].tick(t), c.TXS):
                forwards.setdefault(i, []).append(t - NOW)
                for other in group:
                    if other is not group[i]:
                        other.receive(c.wire(m), t)
    assert set(forwards) == {first}, forwards
    assert forwards[first][:3] == [f, 3 * f, 7 * f], "after f, then 2f later, then 4f later"


def test_only_the_head_of_a_backlog_is_forwarded(community):
    timing = Timing(max_inputs=10, round_ms=10**9)
    r = one(community, timing)
    for payer in range(4):
        for raw in ctps(community, 10, payer):
            r.submit("ctp", raw, NOW)
    head = set(list(r.pool)[: timing.max_inputs])
    forwarded = set()
    for t in range(NOW, NOW + 10 * timing.forward_ms, 100):
        for m in sent(r, r.tick(t), c.TXS):
            forwarded |= {(typ, message_hash(raw)) for typ, raw in decode_inputs(c.bulk(m, "txs"))}
    assert forwarded and forwarded <= head


# -- blocks --


def test_a_proposal_is_capped_in_inputs(community):
    timing = Timing(max_inputs=7)
    r = replicas(community, timing, n=1)[0]
    for raw in ctps(community, 9):
        r.submit("ctp", raw, NOW)
    r.tick(NOW + timing.block_ms)
    assert r.state.height == 1 and len(r.pool) == 2


def test_a_proposal_is_capped_in_bytes(community):
    timing = Timing(block_bytes=BLOCK_OVERHEAD + INPUT_OVERHEAD + MAX_MESSAGE)  # the least it may be
    burst = ctps(community, 300)
    fits = (timing.block_bytes - BLOCK_OVERHEAD) // (len(burst[0]) + INPUT_OVERHEAD)
    r = replicas(community, timing, n=1)[0]
    for raw in burst:
        r.submit("ctp", raw, NOW)
    r.tick(NOW + timing.block_ms)
    assert r.state.height == 1 and len(r.pool) == len(burst) - fits


def test_a_block_must_leave_room_for_any_one_transaction():
    with pytest.raises(ValueError, match="block_bytes"):
        Timing(block_bytes=MAX_MESSAGE)


def proposal(group: list[Replica], inputs: tuple, t: int) -> bytes:
    """Height 1's round-0 proposal by its proposer (validator 1), holding exactly `inputs`."""
    proposer = group[1]
    draft = Draft(proposer.state, proposer.verifier, t)
    for typ, raw in inputs:
        draft.add(typ, raw)
    block = draft.finish()
    raw = c.block_bytes(block.header, block.inputs)
    return c.wire(c.make(proposer.key, 1, c.PROPOSAL, 1, 0, block.hash, block=raw))


def prepares(r: Replica, payload: bytes, t: int) -> bool:
    return bool(sent(r, r.receive(payload, t), c.PREPARE))


def test_a_fresh_proposal_with_an_input_its_bytes_reject_is_not_prepared(community):
    """An honest proposer never pools such an input, so a block holding one is refused: no
    validator stores junk another sent it."""
    good = ("ctp", ctps(community, 1)[0])
    group = replicas(community)
    assert prepares(group[0], proposal(group, (good,), NOW + 1), NOW + 1)
    group = replicas(community)
    assert not prepares(group[0], proposal(group, (good, ("cancel", b"\x00junk")), NOW + 1), NOW + 1)


def test_a_proposal_over_the_caps_is_not_prepared(community):
    group = replicas(community, Timing(max_inputs=2))
    inputs = tuple(("ctp", raw) for raw in ctps(community, 3))
    assert not prepares(group[0], proposal(group, inputs, NOW + 1), NOW + 1)


def test_a_round_with_a_large_proposal_waits_longer(community):
    """Its replay takes time at every validator: the round's timeout grows with the block."""
    timing = Timing()
    small, large = replicas(community, timing), replicas(community, timing)
    inputs = tuple(("ctp", raw) for raw in ctps(community, 200))
    assert prepares(small[0], proposal(small, inputs[:1], NOW + 1), NOW + 1)
    assert prepares(large[0], proposal(large, inputs, NOW + 1), NOW + 1)
    assert large[0].timer - small[0].timer == 199 * timing.replay_us // 1000


# -- the broker's limits --


def test_the_pool_stays_below_the_brokers_in_flight_window():
    """A validator acknowledges a pooled transaction only once decided: a pool as large as
    the window would hold every slot, and no consensus message would reach it again. What
    a full pool leaves free is taken by transactions waiting for the door, which frees them
    whatever consensus does, and by consensus messages."""
    assert Timing().pool_max + 1024 <= MAX_INFLIGHT


def test_the_largest_consensus_messages_fit_the_brokers_size_limit(community):
    """Worst cases under the default caps: a proposal carrying as large a block as allowed
    with a full justification, an answer to a catch-up request, a forward."""
    timing = Timing()
    key = community.validator_keys[0]
    big = ("erc", b"\x00" * (MAX_MESSAGE - 64))  # about as large as a door lets through
    r = one(community, timing)
    draft = Draft(r.state, r.verifier, NOW + 1)
    for _ in range((timing.block_bytes - BLOCK_OVERHEAD) // (len(big[1]) + INPUT_OVERHEAD)):
        draft.add(*big)
    block = draft.finish()
    raw = c.block_bytes(block.header, block.inputs)
    assert len(raw) <= timing.block_bytes < len(raw) + BLOCK_OVERHEAD + len(big[1]) + INPUT_OVERHEAD
    votes = [c.make(key, 0, c.PREPARE, 1, 0, block.hash).signed] * N
    rcs = [c.make(key, 0, c.ROUND_CHANGE, 1, 1, block.hash, pr=0).signed] * N
    largest = c.make(key, 0, c.PROPOSAL, 1, 1, block.hash, block=raw, rcs=rcs, prepares=votes)
    assert len(c.wire(largest)) < MESSAGE_SIZE_LIMIT

    sealed = block.with_seals({(i, bytes(64)) for i in range(N)})
    server = Replica(r.state, r.verifier, 0, key, lambda h: sealed, timing, now=NOW)
    server.state.height = timing.sync_blocks  # as if it had decided that many such blocks
    asked = c.wire(c.make(community.validator_keys[1], 1, c.SYNC, 1))
    answer = sent(server, server.receive(asked, NOW), c.BLOCKS)
    assert len(c.wire(answer[0])) <= timing.sync_bytes + BLOCK_OVERHEAD < MESSAGE_SIZE_LIMIT

    forward = encode_inputs((big,) * (timing.forward_bytes // len(big[1])))
    assert len(forward) < MESSAGE_SIZE_LIMIT


# -- the flood in the simulation --


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_flood_in_the_simulation_stops_no_honest_transaction(seed):
    """One account publishes 1500 CTPs within 100 ms, beyond its share of the pool and
    its balance: every honest transaction is still decided, every validator reaches one
    height, and each CTP of the flood is decided or refused (`busy`)."""
    s = sim.Sim(seed, flood_size=1500)
    s.run()
    s.final_checks()
    assert any(BUSY in node.refused.values() for node in s.honest()), "the flood never overflowed a share"
