"""Four `spb-ledger run` processes over a real Mosquitto, restarted in every order while
trades flow (issue 13): no status on the broker ever goes back.

A CTP's statuses only move forward (held, then settled or refunded, at increasing block
heights), and what meters read is the retained one: after a validator's kill -9, a broker
restart, or both, the stream of statuses must never go back for any CTP, and at the end
every retained status must be the one each validator's `spb-ledger show` reports.

One exception on the stream, not on the broker, once a broker restarted: a validator whose
connection dropped with statuses in flight sends them when it reconnects (QoS 1: again, or
for the first time), and the broker passes them on even if a newer status came meanwhile;
after a broker crash the validators also publish again the statuses it lost while new
blocks come. And a broker that crashed back to a save hands a re-subscribing client the
retained statuses of that save (the retain flag set), older than what came since; each
validator restores what the broker lost, its own statuses with the rest. There a status may
go back for a moment, but only if its sender then publishes one at least as new: the
validator sends the current status of every CTP it had in flight, follows a late copy with
its successor, and restores (docs/CONSENSUS.md, "Statuses only move forward"). So the
validators stop only once their restores are acknowledged.

The same holds in a market chain for the order statuses and interval results (issue 14),
checked with a load of orders across a validator's kill -9 and a broker crash.
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading
from collections.abc import Callable

import pytest

from broker.clock import wall_ms
from ledger import cli
from ledger.statuses import ctp_of, is_status
from tests.support.bus import Inbox, connected, wait_for
from tests.support.consensus import VALIDATORS, Validators
from tests.support.ledger import statuses
from tests.support.market import Market, order_id
from tests.support.market_bus import SOURCES, MarketValidators
from wire import topics
from wire.cose import message_hash
from wire.messages import AccountStatus, Body, Cleared, Order, Status, open_message

# A CTP's statuses in the order they can follow each other: a `rejected` id can still be
# held later by another message; settled and refunded end it. An order is sealed, then open,
# then in one of the final states; an interval's result is final. Block time t grows with h.
RANK = {"rejected": 0, "held": 1, "settled": 2, "refunded": 2, "sealed": 0, "open": 1}


def order(status: Body) -> tuple[int, int, int]:
    """Where a status (a CTP's, an order's, a result, an account's) stands among those of its topic."""
    assert isinstance(status, (Status, Order, Cleared, AccountStatus))
    return status.t, status.h or 0, RANK.get(label(status), 2)


def label(status: Body) -> str:
    """A status's state; a result's and an account's (always final as a topic's word) their typ."""
    return status.state if isinstance(status, (Status, Order)) else status.typ


TRADES, WAVE = 600, 50


@pytest.fixture
def validators(tmp_path, mosquitto, make_client):
    """Four validators (not started) with a pre-signed load of TRADES trades."""
    v = Validators(tmp_path, mosquitto.port, make_client, TRADES)
    yield v
    v.close()


class Feed:
    """The load in waves, from a thread: a wave's CTPs, and once each has a status, the next
    wave's CTPs with this wave's ERCs. So every trade is held in one block and settled in a
    later one, often by another proposer: the case where an old `held` can come back."""

    def __init__(self, v: Validators):
        self.v = v
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            waves = [self.v.trades[i : i + WAVE] for i in range(0, len(self.v.trades), WAVE)]
            previous: list = []
            for wave in [*waves, []]:
                for ctp, *_ in wave:
                    self.v.households.publish(topics.TX_CTP, ctp)
                for _, erc, *_ in previous:
                    self.v.households.publish(topics.TX_ERC, erc)
                ids = {open_message(ctp, "ctp").body.id for ctp, *_ in wave}
                wait_for(
                    lambda ids=ids: ids <= {s.ctp for s in statuses(self.v.inbox)},
                    120,
                    "a status for every CTP of the wave",
                )
                previous = wave
        except BaseException as exc:  # surfaced by done()
            self.error = exc

    def done(self) -> None:
        self.thread.join(180)
        assert not self.thread.is_alive(), "the feed did not finish"
        if self.error is not None:
            raise self.error


def signer(v: Validators, payload: bytes) -> int:
    opened = open_message(payload)
    return next(i for i, key in enumerate(v.genesis().validators) if opened.envelope.verifies(key))


def backward_steps(v: Validators, restarts: list[int] = ()) -> list[str]:
    """Each status that arrived after a newer one on its topic, described, but for those that
    arrived after a broker restart (`restarts`: the watcher's inbox positions then) and
    were followed by one from their sender at least as new (see the module's docstring)."""
    stream = [(at, t, open_message(p).body, p) for at, (t, p, _) in enumerate(v.inbox.messages) if is_status(t)]
    newest: dict[str, Body] = {}
    found = []
    for i, (at, topic, status, payload) in enumerate(stream):
        before = newest.get(topic)
        if before is not None and order(status) < order(before):
            by = signer(v, payload)
            newer = [p for _, t, s, p in stream[i + 1 :] if t == topic and order(s) >= order(before)]
            if not (restarts and at >= min(restarts) and any(signer(v, p) == by for p in newer)):
                found.append(f"{topic[len(topics.ROOT) :]}: {order(status)} by v{by} after {order(before)}")
        if before is None or order(status) > order(before):
            newest[topic] = status
    return found


def stop_and_drain(v: Validators) -> None:
    """Stop every validator cleanly; return once the watcher has each one's `offline <h>`,
    its last message, so the stream holds everything they published."""
    mark = len(v.inbox.messages)
    v.stop_all()
    wait_for(
        lambda: (
            {t for t, p, _ in v.inbox.messages[mark:] if p.startswith(b"offline ")}
            >= {topics.ledger_state(i) for i in range(VALIDATORS)}
        ),
        20,
        "every validator's offline",
    )


def retained_statuses(port: int, make_client, count: int, filters=(topics.STATUS_ALL,)) -> dict[str, Body]:
    """What a newly subscribed client gets on `filters`: the broker's retained statuses, by topic."""
    inbox = Inbox()
    reader = make_client(port, "status-reader")
    for topic in filters:
        reader.subscribe(topic, inbox)
    connected(reader)
    inbox.wait_count(count, 30)
    assert all(retained for _, _, retained in inbox.messages), "a live status after every validator stopped"
    return {t: open_message(p).body for t, p, _ in inbox.messages}


def shown(v: Validators, validator: int, ctp_id: bytes) -> tuple[str, int]:
    """(state, height) of a CTP as `spb-ledger show DIR CTP --validator I` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["show", str(v.root), ctp_id.hex(), "--validator", str(validator)]) == 0
    fields = dict(line.split(" ", 1) for line in out.getvalue().splitlines())
    return fields["state"], int(fields["height"])


def check_statuses(v: Validators, feed: Feed, port: int, make_client, restarts: list[int] = ()) -> None:
    """All trades settled, every validator at one head and its restore acknowledged: stop
    them all, then the stream never went back (see the module's docstring) and each
    retained status is what every validator shows."""
    feed.done()
    v.wait_settled(len(v.trades))
    v.wait_heads_agree()
    v.wait_restored()
    stop_and_drain(v)
    assert backward_steps(v, restarts) == []
    ids = {open_message(ctp, "ctp").body.id for ctp, *_ in v.trades}
    retained = {ctp_of(t): s for t, s in retained_statuses(port, make_client, len(ids)).items()}
    assert set(retained) == ids
    for i in range(VALIDATORS):
        on_disk = {ctp_id: shown(v, i, ctp_id) for ctp_id in ids}
        on_broker = {ctp_id: (s.state, s.h) for ctp_id, s in retained.items() if isinstance(s, Status)}
        assert on_disk == on_broker, f"validator {i} disagrees with the broker"
    v.check_everywhere()


def save(mosquitto) -> None:
    """Mosquitto saves its sessions and retained messages now (SIGUSR1)."""
    mosquitto._process.send_signal(signal.SIGUSR1)
    wait_for(lambda: any(mosquitto.data_dir.glob("*.db")), 10, "the broker's save")


def crash(mosquitto, v: Validators) -> list[int]:
    """kill -9 the broker and start it again on its last save; the watcher's inbox position
    then (backward_steps' `restarts`)."""
    restarts = [len(v.inbox.messages)]
    mosquitto._process.kill()
    mosquitto._process.wait()
    mosquitto._process = None
    mosquitto.start(mosquitto.port, mosquitto.data_dir)
    assert v.households.wait_connected(30)
    return restarts


def start(v: Validators) -> Feed:
    for i in range(VALIDATORS):
        v.start(i)
    return Feed(v)


def test_a_validator_killed_mid_load_never_turns_a_status_back(validators, mosquitto, make_client):
    v = validators
    feed = start(v)
    v.wait_settled(100)
    v.kill(1)
    v.wait_settled(len(v.settled()) + 100)  # the others go on: the killed one's CTPs settle without it
    assert len(v.settled()) < len(v.trades), "the load ended before the restart"
    v.start(1)
    check_statuses(v, feed, mosquitto.port, make_client)


def test_broker_restarts_mid_load_never_turn_a_status_back(validators, mosquitto, make_client):
    """Every validator reconnects, some a block behind the others."""
    v = validators
    feed = start(v)
    restarts = []
    for k in (1, 2):
        v.wait_settled(k * 150)
        restarts.append(len(v.inbox.messages))
        mosquitto.restart()
    assert len(v.settled()) < len(v.trades), "the restarts came after the load"
    check_statuses(v, feed, mosquitto.port, make_client, restarts)


def test_a_validator_killed_then_the_broker_restarted_never_turn_a_status_back(validators, mosquitto, make_client):
    v = validators
    feed = start(v)
    v.wait_settled(100)
    v.kill(2)
    v.wait_settled(len(v.settled()) + 100)
    restarts = [len(v.inbox.messages)]
    mosquitto.restart()
    v.wait_settled(len(v.settled()) + 100)
    assert len(v.settled()) < len(v.trades), "the load ended before the restart"
    v.start(2)
    check_statuses(v, feed, mosquitto.port, make_client, restarts)


def test_a_broker_crash_mid_load_leaves_every_retained_status_right(validators, mosquitto, make_client):
    """The broker is killed after a save and comes back with it, having lost what it took
    since: statuses, and trades it had acknowledged to the households, who send again what
    has not settled (as meters do). Every validator finds its `online` older than its tip and
    publishes the statuses of the lost minutes again, while blocks go on."""
    v = validators
    feed = start(v)
    v.wait_settled(100)
    save(mosquitto)
    v.wait_settled(len(v.settled()) + 100)
    restarts = crash(mosquitto, v)
    settled = v.settled()
    assert len(settled) < len(v.trades), "the crash came after the load"
    for ctp, erc, *_ in v.trades:
        if open_message(ctp, "ctp").body.id not in settled:
            v.households.publish(topics.TX_CTP, ctp)
            v.households.publish(topics.TX_ERC, erc)
    check_statuses(v, feed, mosquitto.port, make_client, restarts)


# -- the market's retained topics: order statuses and interval results (issue 14) --

ORDER_WAVES = 24
FINAL = {"withdrawn", "filled", "partial", "unfilled", "void", "settled", "refunded", "cleared", "account"}


class Answers:
    """What the watcher saw of the market, read incrementally: each retained topic's newest
    status and each message hash the ledger rejected."""

    def __init__(self, inbox: Inbox):
        self.inbox, self.read = inbox, 0
        self.newest: dict[str, Body] = {}
        self.rejected: set[bytes] = set()
        self.lock = threading.Lock()  # read by the feed's thread and the test's

    def update(self) -> None:
        with self.lock:
            messages = self.inbox.messages[self.read :]
            self.read += len(messages)
            for topic, payload, _ in messages:
                if topic == topics.REJECTS:
                    self.rejected.add(open_message(payload, "reject").body.msg)
                elif is_status(topic):
                    status = open_message(payload).body
                    before = self.newest.get(topic)
                    if before is None or order(status) > order(before):
                        self.newest[topic] = status

    def state(self, topic: str) -> str | None:
        status = self.newest.get(topic)
        return None if status is None else label(status)

    def unfinished(self) -> list[str]:
        """Topics whose newest status can still change, and intervals with orders but no result."""
        self.update()
        ks = {s.k for s in self.newest.values() if isinstance(s, Order)}
        missing = [topics.market_result(k) for k in ks if topics.market_result(k) not in self.newest]
        return [t for t in self.newest if self.state(t) not in FINAL] + missing


class MarketFeed:
    """Orders in waves, from a thread: each wave's asks (of the households with a source) and
    bids (of every household) for the interval after next, then, once each is answered (a
    status or a reject), withdrawals of every third open one. So orders stay open for
    seconds, some are withdrawn, the others clear at their gate (filled, partial, unfilled),
    and fills are held, then refunded at expiry: open orders and held fills for late copies
    to cross. What is not answered within 10 s is published again, as a meter does: a broker
    crash loses what it had acknowledged."""

    def __init__(self, v: Validators, answers: Answers):
        self.v, self.answers, self.market = v, answers, Market(v.community)
        terms = v.genesis().market
        assert terms is not None
        self.terms = terms
        self.waves = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="market-feed", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for wave in range(ORDER_WAVES):
                self._wave(wave)
                self.waves = wave + 1
        except BaseException as exc:  # surfaced by done()
            self.error = exc

    def _wave(self, wave: int) -> None:
        m, k = self.market, self.terms.interval(wall_ms()) + 2
        asks = ((0, 3), (1, 4), (2, 5), (0, 6))  # (household, price)
        orders = [(h, topics.TX_ASK, m.ask(h, 5 + wave, price, k, src=SOURCES[h])) for h, price in asks]
        orders += [(h, topics.TX_BID, m.bid(h, 2 + h % 3 + wave, 3 + h, k)) for h in range(len(SOURCES))]
        sent = {topics.market_order(k, order_id(raw)): (h, tx, raw) for h, tx, raw in orders}
        self._until_answered({t: (tx, raw) for t, (_, tx, raw) in sent.items()}, lambda t: self.answers.state(t))
        withdrawn = [t for t in sent if self.answers.state(t) == "open"][::3]
        withdrawals = {t: (topics.TX_WITHDRAW, m.withdraw(sent[t][0], sent[t][2])) for t in withdrawn}
        self._until_answered(withdrawals, lambda t: self.answers.state(t) != "open")

    def _until_answered(self, sent: dict[str, tuple[str, bytes]], done: Callable[[str], object]) -> None:
        """Publish (tx topic, message) per status topic until each is `done` or rejected."""

        def unanswered() -> list[str]:
            self.answers.update()
            return [t for t, (_, raw) in sent.items() if not done(t) and message_hash(raw) not in self.answers.rejected]

        for _ in range(6):
            for topic in unanswered():
                self.v.households.publish(*sent[topic])
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not unanswered(), 10, "answers")
                return
        raise AssertionError(f"wave {self.waves}: {len(unanswered())} of {len(sent)} not answered in a minute")

    def wait_waves(self, count: int) -> None:
        wait_for(lambda: self.waves >= count or self.error, 120, f"{count} waves of orders")
        if self.error is not None:
            raise self.error

    def done(self) -> None:
        self.thread.join(300)
        assert not self.thread.is_alive(), "the market feed did not finish"
        if self.error is not None:
            raise self.error


def stored(v: Validators, i: int) -> dict[str, tuple[str, int]]:
    """(state, height) on every status topic of validator i's database: CTPs (held ones
    and fills), orders, results."""
    store = v.store(i)
    state = store.load()
    store.close()
    assert state.market is not None
    out = {topics.status(r.ctp.id): (str(r.state), r.height) for r in state.ctps.values()}
    out |= {topics.market_order(o.k, o.id): (str(o.state), o.height) for o in state.market.orders.values()}
    out |= {topics.market_result(r.k): ("cleared", r.height) for r in state.market.results.values()}
    out |= {topics.account(pk): ("account", h) for pk, (h, _) in state.moved_at.items() if h}
    return out


def balances(v: Validators, i: int) -> dict[str, tuple[int, int]]:
    """Account status topic -> (balance, held) in validator i's database."""
    store = v.store(i)
    accounts = store.accounts()
    store.close()
    return {topics.account(pk): money for pk, money in accounts.items()}


def test_market_statuses_survive_a_validator_killed_and_a_broker_crash(tmp_path, mosquitto, make_client):
    """Orders flow in waves; a validator is killed mid-load (its blocks' statuses go out from
    stand-ins, its outbox late when it returns), then the broker crashes back to a save
    (every validator restores the order statuses, results and account statuses it lost). No
    order status, result or account status goes back on the broker, and each retained one is
    what every validator stored."""
    v = MarketValidators(tmp_path, mosquitto.port, make_client)
    try:
        answers = Answers(v.inbox)
        for i in range(VALIDATORS):
            v.start(i)
        feed = MarketFeed(v, answers)
        feed.wait_waves(4)
        v.kill(1)
        feed.wait_waves(8)
        save(mosquitto)
        feed.wait_waves(12)
        assert feed.waves < ORDER_WAVES, "the load ended before the crash"
        restarts = crash(mosquitto, v)
        v.start(1)
        feed.done()
        wait_for(lambda: not answers.unfinished(), 60, lambda: f"final statuses; not yet {answers.unfinished()[:5]}")
        v.wait_heads_agree()
        v.wait_restored()
        stop_and_drain(v)
        assert backward_steps(v, restarts) == []
        answers.update()
        states = {answers.state(t) for t in answers.newest}
        assert {"withdrawn", "filled", "unfilled", "refunded", "cleared"} <= states, states
        filters = (topics.STATUS_ALL, topics.MARKET_ALL, topics.ACCOUNT_ALL)
        on_broker = retained_statuses(mosquitto.port, make_client, len(answers.newest), filters)
        assert set(on_broker) == set(answers.newest)
        on_broker_states = {t: (label(s), s.h) for t, s in on_broker.items()}
        money = {t: (s.balance, s.held) for t, s in on_broker.items() if isinstance(s, AccountStatus)}
        assert len(money) == MarketValidators.HOUSEHOLDS, "every account's money is retained"
        for i in range(VALIDATORS):
            assert stored(v, i) == on_broker_states, f"validator {i} disagrees with the broker"
            assert balances(v, i) == money, f"validator {i}'s balances are not the retained ones"
            out = v.cli("audit", str(v.root), "--validator", str(i))
            assert out.startswith("audit ok"), out
    finally:
        v.close()
