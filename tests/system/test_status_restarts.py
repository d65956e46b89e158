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
blocks come. There a status may go back for a moment, but only if its sender then publishes
one at least as new: the validator sends the current status of every CTP it had in flight,
and follows a late copy with its successor (docs/CONSENSUS.md, "Statuses only move forward").
"""

from __future__ import annotations

import contextlib
import io
import signal
import threading

import pytest

from ledger import cli
from tests.support.bus import Inbox, connected, wait_for
from tests.support.consensus import VALIDATORS, Validators
from tests.support.ledger import statuses
from wire import topics
from wire.messages import Status, open_message

# A CTP's statuses in the order they can follow each other: a `rejected` id can still be
# held later by another message; settled and refunded end it. Block time t grows with h.
RANK = {"rejected": 0, "held": 1, "settled": 2, "refunded": 2}


def order(status: Status) -> tuple[int, int, int]:
    return status.t, status.h or 0, RANK[status.state]


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
    opened = open_message(payload, "status")
    return next(i for i, key in enumerate(v.genesis().validators) if opened.envelope.verifies(key))


def backward_steps(v: Validators, restarts: list[int] = ()) -> list[str]:
    """Each status that arrived after a newer one of its CTP, described, but for those that
    arrived after a broker restart (`restarts`: the watcher's inbox positions then) and
    were followed by one from their sender at least as new (see the module's docstring)."""
    stream = [
        (at, open_message(p, "status").body, p)
        for at, (t, p, _) in enumerate(v.inbox.messages)
        if t.startswith(f"{topics.ROOT}/status/")
    ]
    newest: dict[bytes, Status] = {}
    found = []
    for i, (at, status, payload) in enumerate(stream):
        before = newest.get(status.ctp)
        if before is not None and order(status) < order(before):
            by = signer(v, payload)
            newer = [p for _, s, p in stream[i + 1 :] if s.ctp == status.ctp and order(s) >= order(before)]
            if not (restarts and at >= min(restarts) and any(signer(v, p) == by for p in newer)):
                found.append(
                    f"{status.ctp.hex()[:12]}: {status.state}@{status.h} by v{by} after {before.state}@{before.h}"
                )
        if before is None or order(status) > order(before):
            newest[status.ctp] = status
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


def retained_statuses(port: int, make_client, count: int) -> dict[bytes, Status]:
    """What a newly subscribed client gets on spb/v1/status/+: the broker's retained statuses."""
    inbox = Inbox()
    reader = make_client(port, "status-reader")
    reader.subscribe(topics.STATUS_ALL, inbox)
    connected(reader)
    inbox.wait_count(count, 30)
    assert all(retained for _, _, retained in inbox.messages), "a live status after every validator stopped"
    return {s.ctp: s for s in (open_message(p, "status").body for _, p, _ in inbox.messages)}


def shown(v: Validators, validator: int, ctp_id: bytes) -> tuple[str, int]:
    """(state, height) of a CTP as `spb-ledger show DIR CTP --validator I` prints them."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["show", str(v.root), ctp_id.hex(), "--validator", str(validator)]) == 0
    fields = dict(line.split(" ", 1) for line in out.getvalue().splitlines())
    return fields["state"], int(fields["height"])


def check_statuses(v: Validators, feed: Feed, port: int, make_client, restarts: list[int] = ()) -> None:
    """All trades settled and every validator at one head: stop them all, then the stream
    never went back (see the module's docstring) and each retained status is what every
    validator shows."""
    feed.done()
    v.wait_settled(len(v.trades))
    v.wait_heads_agree()
    stop_and_drain(v)
    assert backward_steps(v, restarts) == []
    ids = {open_message(ctp, "ctp").body.id for ctp, *_ in v.trades}
    retained = retained_statuses(port, make_client, len(ids))
    assert set(retained) == ids
    for i in range(VALIDATORS):
        on_disk = {ctp_id: shown(v, i, ctp_id) for ctp_id in ids}
        on_broker = {ctp_id: (s.state, s.h) for ctp_id, s in retained.items()}
        assert on_disk == on_broker, f"validator {i} disagrees with the broker"
    v.check_everywhere()


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
    mosquitto._process.send_signal(signal.SIGUSR1)  # Mosquitto saves now
    wait_for(lambda: any(mosquitto.data_dir.glob("*.db")), 10, "the broker's save")
    v.wait_settled(len(v.settled()) + 100)
    restarts = [len(v.inbox.messages)]
    mosquitto._process.kill()
    mosquitto._process.wait()
    mosquitto._process = None
    mosquitto.start(mosquitto.port, mosquitto.data_dir)
    assert v.households.wait_connected(30)
    settled = v.settled()
    assert len(settled) < len(v.trades), "the crash came after the load"
    for ctp, erc, *_ in v.trades:
        if open_message(ctp, "ctp").body.id not in settled:
            v.households.publish(topics.TX_CTP, ctp)
            v.households.publish(topics.TX_ERC, erc)
    check_statuses(v, feed, mosquitto.port, make_client, restarts)
