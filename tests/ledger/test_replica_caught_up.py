"""Replica.caught_up: a validator knows it reached the network's head once f + 1 peers
answered a catch-up request sent since rejoin() with blocks up to their tips, maybe none.
Its adapter holds statuses back until then (ledger.statuses)."""

from __future__ import annotations

from collections import deque

from ledger import consensus as c
from ledger import sim
from ledger.block import encode_inputs
from ledger.replica import Decided, Replica, Send, Timing
from ledger.state import LedgerState
from wire.cose import encode
from wire.verify import Verifier

NOW = sim.NOW
TIMING = Timing(block_ms=200, sync_ms=500, sync_blocks=2)


class Net:
    """Four replicas on sim's genesis; messages delivered at once, in order, to those running."""

    def __init__(self, running=(0, 1, 2, 3)):
        w = sim.workload()
        self.w = w
        self.chains: list[dict] = [{} for _ in range(4)]
        self.replicas = [self._replica(i) for i in range(4)]
        self.running = set(running)
        self.queue: deque = deque()

    def _replica(self, i: int, genesis=None) -> Replica:
        genesis = genesis or self.w.genesis
        state = LedgerState(genesis)
        verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
        return Replica(state, verifier, i, self.w.keys[i], self.chains[i].get, TIMING, None, NOW, 0)

    def act(self, i: int, actions: list) -> list[Send]:
        sent = []
        for action in actions:
            if isinstance(action, Send):
                sent.append(action)
                self.queue.append((i, action))
            elif isinstance(action, Decided):
                self.chains[i][action.block.header.height] = action.block
        return sent

    def run(self, mono: int = 0, drop=lambda sender, to, payload: False) -> None:
        while self.queue:
            sender, send = self.queue.popleft()
            for to in sorted(self.running - {sender}):
                if (send.to is None or send.to == to) and not drop(sender, to, send.payload):
                    self.act(to, self.replicas[to].receive(send.payload, NOW + mono, mono))

    def decide_blocks(self, count: int) -> None:
        """Blocks 1..count decided by the running replicas, one workload transaction each."""
        for typ, raw in self.w.txs[: 2 * count : 2]:
            height = self.replicas[min(self.running)].state.height
            for i in sorted(self.running):
                self.act(i, self.replicas[i].submit(typ, raw, NOW + height * 1000, height * 1000))
            self.run(height * 1000)
        assert {self.replicas[i].state.height for i in self.running} == {count}


def answers(sent: list[Send]) -> list[c.Signed]:
    return [
        m for m in (c.open_signed(s.payload, sim.workload().genesis.validators) for s in sent) if m.kind == c.BLOCKS
    ]


def test_a_replica_is_caught_up_once_f_plus_1_peers_answered_since_rejoin():
    net = Net()
    fresh = net.replicas[0]
    assert not fresh.caught_up and fresh.heads is None
    net.act(0, fresh.rejoin(NOW, 0))
    heard = []
    while net.queue:  # one message at a time, to see the moment it flips
        sender, send = net.queue.popleft()
        for to in sorted(net.running - {sender}):
            if send.to is None or send.to == to:
                net.act(to, net.replicas[to].receive(send.payload, NOW, 0))
                if to == 0:
                    heard.append((sender, fresh.caught_up))
    # The idle peers answer with no blocks: the first answer is not enough (f = 1), the second is.
    flips = [caught for sender, caught in heard]
    assert flips.count(False) >= 1 and flips[-1] is True
    assert len(fresh.heads) == 2 and fresh.caught_up


def test_answers_that_came_before_rejoin_do_not_count():
    """An adapter calls rejoin() once the broker's backlog for it is read: an answer in that
    backlog may be from long ago."""
    net = Net()
    replica = net.replicas[0]
    net.act(0, replica.tick(NOW, 0))  # the SYNC every replica sends when it starts
    net.run()
    assert not replica.caught_up
    net.act(0, replica.rejoin(NOW, 10))
    net.run(10)  # the peers answered 10 ms ago: they wait sync_ms before answering again
    assert not replica.caught_up
    net.act(0, replica.tick(NOW, 10 + TIMING.sync_ms))
    net.run(10 + TIMING.sync_ms)
    assert replica.caught_up


def test_a_replica_behind_catches_up_first_and_a_full_answer_does_not_count():
    """A full answer (sync_blocks = 2 here) may not reach the peer's tip: it counts for
    nothing, and the replica asks again (every sync_ms, however quiet the network)."""
    net = Net(running=(1, 2, 3))
    net.decide_blocks(3)
    net.running.add(0)
    behind = net.replicas[0]
    got = []  # (blocks in the answer, caught up before, caught up after)

    def deliver(mono: int) -> None:
        while net.queue:
            sender, send = net.queue.popleft()
            for to in sorted(net.running - {sender}):
                if send.to is not None and send.to != to:
                    continue
                before = net.replicas[to].caught_up
                net.act(to, net.replicas[to].receive(send.payload, NOW + mono, mono))
                for m in answers([send]) if to == 0 else []:
                    got.append((len(c.load_list(c.bulk(m, "blocks"), "blocks")), before, behind.caught_up))

    mono = 10_000
    net.act(0, behind.rejoin(NOW + mono, mono))
    while not behind.caught_up and mono < 20_000:
        deliver(mono)
        mono += TIMING.sync_ms
        net.act(0, behind.tick(NOW + mono, mono))
    assert behind.state.height == 3 and behind.caught_up
    assert all(after == before for size, before, after in got if size == 2), got
    assert any(size == 2 for size, _, _ in got) and any(size < 2 and after for size, _, after in got), got


def test_an_answer_with_a_block_that_does_not_replay_does_not_count():
    net = Net(running=(1, 2, 3))
    net.decide_blocks(1)
    block = net.chains[1][1]
    forged = block.with_seals(block.seals[:1])  # one seal: not a quorum's block
    for peer in (1, 2):
        raw = encode([[forged.chain_bytes(), encode_inputs(forged.inputs)]])
        key = net.w.keys[peer]
        replica = net.replicas[0]
        if replica.heads is None:
            replica.rejoin(NOW, 0)
        replica.receive(c.wire(c.make(key, peer, c.BLOCKS, 1, d=c.digest(raw), blocks=raw)), NOW, 0)
    assert net.replicas[0].state.height == 0 and not net.replicas[0].caught_up


def test_it_asks_again_every_sync_ms_until_caught_up():
    """Answers can be lost (a consensus message is acknowledged on receipt)."""
    net = Net()
    replica = net.replicas[0]

    def syncs(actions) -> int:
        return sum(
            m.kind == c.SYNC for m in (c.open_signed(a.payload, replica.validators) for a in net.act(0, actions))
        )

    assert syncs(replica.rejoin(NOW, 0)) >= 1
    net.queue.clear()  # every answer lost
    assert replica.deadline(NOW, 0) == TIMING.sync_ms
    assert syncs(replica.tick(NOW, TIMING.sync_ms - 1)) == 0
    assert syncs(replica.tick(NOW, TIMING.sync_ms)) == 1
    net.run(TIMING.sync_ms)
    assert replica.caught_up
    assert syncs(replica.tick(NOW, 10 * TIMING.sync_ms)) == 0, "no more asking once caught up"


def test_a_lone_validator_is_always_caught_up():
    w = sim.workload()
    genesis = sim.SimCommunity(5, NOW, seed=b"spb-energy consensus simulation").genesis(1_000, validators=1)
    replica = Replica(
        LedgerState(genesis), Verifier(cas=genesis.cas, validators=genesis.validators), 0, w.keys[0], {}.get
    )
    assert replica.caught_up
    assert replica.rejoin(NOW, 0) == [] and replica.caught_up
