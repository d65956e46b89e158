"""A market chain (docs/PROTOCOL.md §9) run by four `spb-ledger run` processes on a real
Mosquitto: six households, the first two selling `solar`, the third `grid`, the last three
only buying, and what the validators publish, each message checked against the genesis'
validator keys before a test reads it.

The validators run on the wall clock, so interval k is a stretch of real time here:
`INTERVAL_S` is short, and a test waits for the clock to pass a gate as it waits for any
other condition (`wait_clock`)."""

from __future__ import annotations

import signal
from pathlib import Path

from broker.clock import wall_ms
from ledger.genesis import MarketTerms, MeterEntry
from ledger.workload import pk
from tests.support.bus import connected, wait_for
from tests.support.consensus import VALIDATORS, Validators
from wire import topics
from wire.cose import message_hash
from wire.messages import Cleared, Order, Rejection, Status
from wire.reasons import Reject
from wire.verify import Verifier

SOURCES = ("solar", "solar", "grid", "", "", "")  # household i's meter
INTERVAL_S = 4
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
REVEAL_S = 2
GRACE = 2  # a fill of k expires at the end of k + 2: room for exports and ERCs before it
AHEAD = 3
BALANCE = 10_000


class MarketValidators(Validators):
    """Validators (tests.support.consensus) of a market chain, watching its market topics and
    account statuses too."""

    HOUSEHOLDS = len(SOURCES)

    def __init__(self, tmp_path: Path, port: int, make_client):
        watched = (*Validators.WATCHED, topics.MARKET_ALL, topics.ACCOUNT_ALL)
        super().__init__(tmp_path, port, make_client, 0, watched=watched)
        self.verifier = Verifier(cas=[pk(self.community.ca)], validators=self.genesis().validators)

    def ledger_dir(self, root: Path, block_ms: int) -> Path:
        c = self.community
        meters = tuple(MeterEntry(h.meter_id, pk(h.account), SOURCES[h.index]) for h in c.households)
        terms = MarketTerms(meters, interval_s=INTERVAL_S, ahead=AHEAD, grace=GRACE, reveal_s=REVEAL_S)
        return c.ledger_dir(root, BALANCE, block_ms, VALIDATORS, terms)

    # -- sending --

    def send(self, topic: str, raw: bytes) -> bytes:
        """Publish as the households do (one client, so the broker keeps the order); H(raw)."""
        self.households.publish(topic, raw)
        return message_hash(raw)

    def pause(self, i: int) -> None:
        self.processes[i].send_signal(signal.SIGSTOP)

    def resume(self, i: int) -> None:
        self.processes[i].send_signal(signal.SIGCONT)

    # -- what the validators published, signature-checked --

    def _opened(self, typ: str) -> list[tuple[str, object]]:
        return [
            (t, self.verifier.verify(p, wall_ms(), expect=typ).body)
            for t, p, _ in list(self.inbox.messages)
            if topics.expected_type(t) == typ
        ]

    def trade_statuses(self, trade: bytes | None = None) -> list[Status]:
        found = []
        for topic, status in self._opened("status"):
            assert isinstance(status, Status) and topic == topics.status(status.ctp), topic
            if trade is None or status.ctp == trade:
                found.append(status)
        return found

    def signers(self, trade: bytes) -> list[tuple[str, int, int]]:
        """(state, height, index of the validator that signed it) of each status of a trade,
        in arrival order: who published what, for a failure message."""
        keys = self.genesis().validators
        found = []
        for t, p, _ in list(self.inbox.messages):
            if t == topics.status(trade):
                status = self.verifier.verify(p, wall_ms(), expect="status").body
                found.append((status.state, status.h, next(i for i, key in enumerate(keys) if _signed(p, key))))
        return found

    def orders(self, order: bytes | None = None) -> list[Order]:
        found = []
        for topic, o in self._opened("order"):
            assert isinstance(o, Order) and topic == topics.market_order(o.k, o.id), topic
            if order is None or o.id == order:
                found.append(o)
        return found

    def results(self, k: int) -> list[Cleared]:
        return [r for t, r in self._opened("cleared") if t == topics.market_result(k) and isinstance(r, Cleared)]

    def rejects(self, msg: bytes) -> list[Rejection]:
        return [r for _, r in self._opened("reject") if isinstance(r, Rejection) and r.msg == msg]

    def wait_order(self, order: bytes, state: str, timeout: float = 30) -> Order:
        return wait_for(
            lambda: next((o for o in self.orders(order) if o.state == state), None),
            timeout,
            lambda: (
                f"{state} for order {order.hex()}; saw {[(o.id.hex()[:8], o.state) for o in self.orders()]}"
                f"{self.procs.logs()}"
            ),
        )

    def wait_trade(self, trade: bytes, state: str, timeout: float = 30) -> Status:
        return wait_for(
            lambda: next((s for s in self.trade_statuses(trade) if s.state == state), None),
            timeout,
            lambda: (
                f"{state} for trade {trade.hex()}; saw "
                f"{[(s.ctp.hex()[:8], s.state) for s in self.trade_statuses()]}{self.procs.logs()}"
            ),
        )

    def wait_reject(self, msg: bytes, timeout: float = 30) -> Rejection:
        return wait_for(
            lambda: next(iter(self.rejects(msg)), None),
            timeout,
            lambda: f"a reject of {msg.hex()[:16]}{self.procs.logs()}",
        )

    def wait_result(self, k: int, timeout: float = 30) -> Cleared:
        return wait_for(lambda: next(iter(self.results(k)), None), timeout, f"interval {k}'s result")

    def wait_exports(self, want: set[tuple[str, int]], timeout: float = 30) -> None:
        """Until every validator's database holds an export record for each (meter, k): an
        accepted export gets no status, so the stores say it."""

        def recorded() -> bool:
            for i in range(VALIDATORS):
                store = self.store(i)
                try:
                    if not want <= set(store.load().market.exports):
                        return False
                finally:
                    store.close()
            return True

        wait_for(recorded, timeout, lambda: f"export records {sorted(want)} on every validator{self.procs.logs()}")

    def read_retained(self, make_client, topic_filter: str, count: int, name: str) -> dict[str, bytes]:
        """topic -> payload of the `count` retained messages a newcomer on topic_filter gets."""
        got: dict[str, bytes] = {}
        client = make_client(self.port, name)
        client.subscribe(topic_filter, lambda t, p, retained: got.__setitem__(t, p) if retained else None)
        connected(client)
        wait_for(lambda: len(got) >= count, 10, lambda: f"{count} retained under {topic_filter}; got {sorted(got)}")
        return got


def _signed(payload: bytes, validator: bytes) -> bool:
    try:
        Verifier(cas=[], validators=[validator]).verify(payload, wall_ms(), expect="status")
    except Reject:
        return False
    return True


def wait_clock(t: int, margin_s: float = 60) -> None:
    """Until the wall clock, which the validators read for block times, has reached t (ms)."""
    wait_for(lambda: wall_ms() >= t, (t - wall_ms()) / 1000 + margin_s, f"the clock at {t}", interval=0.005)
