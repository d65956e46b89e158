"""A meter's export records (docs/PROTOCOL.md §9.4) on a real Mosquitto: one per interval,
across a restart, none lost and none made twice (a resent copy is the same bytes)."""

from __future__ import annotations

import itertools

from broker.clock import wall_ms
from deploy.provision import provision
from edge.config import MeterConfig
from edge.state_dir import MeterIdentity
from tests.support.bus import Inbox, connected, wait_for
from wire import topics
from wire.messages import Export
from wire.verify import Verifier


def test_a_meter_sends_one_record_per_interval_across_a_restart(tmp_path, mosquitto, make_client, run_meter):
    community = provision(tmp_path / "c", meters=1, accounts=None, validators=1, now_ms=wall_ms() - 60_000)
    identity = MeterIdentity.load(community.root / "meters" / "m0001")
    verifier = Verifier(cas=[identity.ca_pk])
    inbox = Inbox()
    watcher = make_client(mosquitto.port, "watcher")
    granted = watcher.subscribe(topics.TX_EXPORT, inbox)
    connected(watcher)
    assert granted.wait(10)

    def records() -> dict[int, bytes]:
        """k -> the record's bytes; a k sent twice must be the same bytes (the outbox resending)."""
        seen: dict[int, bytes] = {}
        for payload in inbox.payloads():
            body = verifier.verify(payload, wall_ms(), expect=Export).body
            assert seen.setdefault(body.k, payload) == payload, f"two different records for interval {body.k}"
        return seen

    config = MeterConfig(interval_s=1, sample_hz=20, reading_s=60)
    exporting = lambda _elapsed: (0, 36_000)  # noqa: E731 — 10 Wh a second
    first = run_meter(identity, config, exporting)
    wait_for(lambda: len(records()) >= 3, 20, lambda: f"3 records; got {sorted(records())}")
    first.stop()
    before = max(records())
    second = run_meter(identity, config, exporting)
    wait_for(lambda: max(records()) >= before + 3, 20, lambda: f"3 more records; got {sorted(records())}")
    second.stop()

    bodies = [verifier.verify(raw, wall_ms(), expect=Export).body for _, raw in sorted(records().items())]
    for earlier, later in itertools.pairwise(bodies):
        assert later.k > earlier.k
        assert later.total - later.wh == earlier.total, "a record's Wh start where the last one's total ended"
    assert sum(b.wh for b in bodies) == bodies[-1].total - (bodies[0].total - bodies[0].wh)
    assert sum(b.wh for b in bodies[1:]) > 0
    gaps = [later.k - earlier.k for earlier, later in itertools.pairwise(bodies)]
    assert gaps.count(1) >= len(gaps) - 1, f"at most the restart may skip intervals: {gaps}"
