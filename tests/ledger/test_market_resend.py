"""A market message whose rejection decided nothing for good is decided again when it comes
again (docs/PROTOCOL.md §9.2, §9.4): a reveal refused `too-early` is sent again within its
window, an export record refused `too-early` after the interval's end, and an ERC refused
`oversold` after the seller's next export record, each as the same bytes
(edge/market.py on_reject, edge/meter.py RETRY_EXPORT, edge/trades.py retry_after_oversold).

The replica must not take those copies for a broker's redelivery of a decided transaction
(Replica.recent, kept for recent_ms = 120 s): every reveal window is shorter than that,
and so are a demo's intervals.
"""

from __future__ import annotations

import pytest

from ledger.replica import Ack, Decided, Replica, Timing
from ledger.state import LedgerState
from ledger.workload import SimCommunity
from wire.cose import message_hash
from wire.market import fill_id
from wire.verify import Verifier

NOW = 1_800_000_000_000
INTERVAL_S = 10
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
K = NOW // I + 1  # its gate is K * I, 10 s after NOW
TIMING = Timing(block_ms=200)


class OneValidator:
    """A one-validator market chain driven by hand: each submit is decided in its own block."""

    def __init__(self) -> None:
        self.c = SimCommunity(4, NOW, seed=b"market resend", sources=("solar", "grid"))
        genesis = self.c.genesis(1_000, market=self.c.market_terms(interval_s=INTERVAL_S, ahead=3, reveal_s=5))
        self.replica = Replica(
            LedgerState(genesis),
            Verifier(cas=genesis.cas, validators=genesis.validators),
            0,
            self.c.validator_keys[0],
            lambda h: None,
            TIMING,
            None,
            NOW,
            0,
        )

    def decide(self, typ: str, raw: bytes, at: int) -> str | None:
        """Submit at wall time `at` and tick until a block decides it: its reason (None:
        accepted). Fails if the replica acknowledges it without deciding it."""
        mono = at - NOW
        actions = self.replica.submit(typ, raw, at, mono)
        key = (typ, message_hash(raw))
        for step in range(50):
            for action in actions:
                if isinstance(action, Decided):
                    for (input_typ, input_raw), reason in zip(action.block.inputs, action.draft.reasons, strict=True):
                        if (input_typ, message_hash(input_raw)) == key:
                            return reason
                elif isinstance(action, Ack) and key in action.keys and key not in self.replica.pool:
                    pytest.fail(f"{typ} acknowledged at {at - NOW} ms without a block deciding it")
            tick = at + 100 * (step + 1)
            actions = self.replica.tick(tick, tick - NOW)
        pytest.fail(f"{typ} not decided within 5 s")

    def idle_block(self, at: int) -> None:
        """Tick from wall time `at` until the replica makes a block with no input (a clearing)."""
        for step in range(50):
            tick = at + 100 * step
            if any(isinstance(a, Decided) for a in self.replica.tick(tick, tick - NOW)):
                return
        pytest.fail("no block within 5 s")


def test_a_reveal_refused_too_early_is_decided_when_it_comes_again_in_its_window():
    v = OneValidator()
    bid = v.c.bid(1, 10, 5, K)
    seal, nonce = v.c.seal(bid, deposit=50)
    reveal = v.c.reveal(seal, bid, nonce)
    assert v.decide("seal", seal, NOW + 1_000) is None
    assert v.decide("reveal", reveal, K * I - 1_000) == "too-early"  # the meter's clock ran ahead
    assert v.decide("reveal", reveal, K * I + 1_000) is None


def test_an_export_record_refused_too_early_is_decided_when_it_comes_again_after_the_interval():
    v = OneValidator()
    export = v.c.export(0, K, wh=30, total=30)
    assert v.decide("export", export, (K + 1) * I - 500) == "too-early"
    assert v.decide("export", export, (K + 1) * I + 1_000) is None


def test_an_erc_refused_oversold_is_decided_when_it_comes_again_after_the_export_record():
    v = OneValidator()
    ask, bid = v.c.ask(0, 20, 2, K), v.c.bid(2, 20, 4, K)
    assert v.decide("ask", ask, NOW + 1_000) is None
    assert v.decide("bid", bid, NOW + 2_000) is None
    v.idle_block(K * I)  # the clearing: the fill is a held trade
    erc = v.c.fill_erc(bid, fill_id(message_hash(bid), message_hash(ask)), 20)
    assert v.decide("erc", erc, K * I + 3_000) == "oversold"
    assert v.decide("export", v.c.export(0, K, wh=20, total=20), (K + 1) * I + 1_000) is None
    assert v.decide("erc", erc, (K + 1) * I + 2_000) is None
