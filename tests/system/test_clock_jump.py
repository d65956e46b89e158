"""A validator whose wall clock jumps an hour forward, comes back, then jumps an hour back, on
a real Mosquitto: its block times follow the monotonic clock through each jump (never an
hour's leap, always increasing), and its metrics and log raise the alarm."""

from __future__ import annotations

import itertools
import logging
import re
import threading
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from broker.clock import wall_ms
from ledger.clock_guard import ClockGuard
from ledger.service import LedgerService
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.support.bus import Inbox, connected
from tests.support.ledger import ledger_dir, wait_online, wait_status
from wire import topics
from wire.messages import open_message

HOUR = 3_600_000
ALARM = re.compile(r"the wall clock jumped ([+-][0-9.]+) s")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_block_times_ride_out_a_jump_forward_and_back(tmp_path, mosquitto, make_client, caplog):
    now = wall_ms()
    community = SimCommunity(3, now)
    root = ledger_dir(tmp_path / "ledger", community)
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    for topic in (topics.STATUS_ALL, topics.ledger_state(0)):
        watcher.subscribe(topic, inbox)
    connected(watcher)
    jump = [0]  # what the test does to the validator's wall clock
    service = LedgerService(
        ValidatorIdentity.load(root, 0),
        "127.0.0.1",
        mosquitto.port,
        clock=lambda: wall_ms() + jump[0],
        guard=ClockGuard(),  # as the real clock gets: 1 s tolerance, 60 s to settle
    )
    metrics_port = service.serve_metrics(0)
    thread = threading.Thread(target=service.run, name="ledger", daemon=True)
    household = connected(make_client(mosquitto.port, "household"))

    def held_in_a_block(payer: int) -> int:
        """A CTP from `payer`, held: the height of its block."""
        ctp = community.ctp(payer, (payer + 1) % 3, amount=1, wh=1, exp=now + 600_000)
        household.publish(topics.TX_CTP, ctp)
        status = wait_status(inbox, open_message(ctp, "ctp").body.id, "held")
        assert status.h is not None
        return status.h

    with caplog.at_level(logging.WARNING, "spb.ledger"):
        thread.start()
        try:
            wait_online(inbox)
            heights = [held_in_a_block(0)]
            jump[0] = HOUR  # an NTP server gone wrong
            heights.append(held_in_a_block(1))
            ahead = scrape(metrics_port)
            jump[0] = 0  # set right again
            heights.append(held_in_a_block(2))
            jump[0] = -HOUR
            heights.append(held_in_a_block(0))
            behind = scrape(metrics_port)
        finally:
            service.stop()
            thread.join(10)
    assert not thread.is_alive(), "the ledger did not stop"

    identity = ValidatorIdentity.load(root, 0)
    store = LedgerStore(identity.db_path, identity.genesis, readonly=True)
    times = [store.block_time(h) for h in heights]
    store.close()
    assert heights == sorted(set(heights)), heights
    steps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0 < step < HOUR // 2 for step in steps), steps  # forward, and never by the jump
    assert now <= times[0] and times[-1] < now + HOUR // 2

    assert ahead["spb_ledger_clock_jumps_total"] == 1
    assert abs(ahead["spb_ledger_clock_offset_seconds"] - 3600) <= 1  # within the guard's tolerance
    assert behind["spb_ledger_clock_jumps_total"] == 2  # the return was no jump: back in step
    assert abs(behind["spb_ledger_clock_offset_seconds"] + 3600) <= 1
    jumps = [float(m[1]) for r in caplog.records if (m := ALARM.match(r.getMessage()))]
    assert len(jumps) == 2 and abs(jumps[0] - 3600) <= 1 and abs(jumps[1] + 3600) <= 1, jumps
