"""Export records (docs/PROTOCOL.md §9.4): edge.export's pure bookkeeping, and the meter
committing one record per interval with its totals, across restarts, through its outbox."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.clock import wall_ms
from deploy.provision import provision
from edge.config import MeterConfig
from edge.energy import WMS_PER_WH
from edge.export import Due, ExportState, next_end, step
from edge.meter import MeterNode
from edge.state_dir import MeterIdentity
from wire import topics
from wire.messages import Export
from wire.verify import Verifier

IMS = 10_000  # a 10 s interval, in ms
T0 = 1_800_000_000_000  # an interval start (divisible by IMS)


def test_the_first_look_starts_accounting_and_sends_nothing():
    state, due = step(ExportState(), 7, T0 + 3_000, IMS)
    assert (state, due) == (ExportState(T0 // IMS, 7), None)
    assert next_end(state, IMS) == T0 + IMS


def test_a_record_is_due_once_the_interval_has_ended():
    state = ExportState(T0 // IMS, 7)
    assert step(state, 9, T0 + IMS - 1, IMS) == (state, None)
    new, due = step(state, 12, T0 + IMS, IMS)
    assert due == Due(T0 // IMS, 5, 12)
    assert new == ExportState(T0 // IMS + 1, 12)


def test_intervals_the_meter_was_off_for_are_not_invented():
    """Off from interval j to j+5: j gets what was measured before the stop, j+1..j+4
    nothing, and j+5 (the first after boot) counts from boot."""
    j = T0 // IMS
    new, due = step(ExportState(j, 100), 104, T0 + 5 * IMS + 2_000, IMS)
    assert due == Due(j, 4, 104)
    assert new == ExportState(j + 5, 104)


def test_a_clock_that_went_back_sends_nothing_and_a_counter_that_went_back_is_refused():
    state = ExportState(T0 // IMS, 7)
    assert step(state, 8, T0 - 5 * IMS, IMS) == (state, None)
    with pytest.raises(ValueError, match="went back"):
        step(state, 6, T0 + IMS, IMS)


@given(st.lists(st.tuples(st.integers(0, 3 * IMS), st.integers(0, 50)), max_size=40))
@settings(max_examples=200, deadline=None)
def test_records_go_forward_and_add_up_to_the_counter(looks):
    """Whatever the times and counters looked at: records have increasing k, each passes the
    ledger's `counter` check (total - wh = the last record's total), and their Wh add up to
    the counter's growth since the first look, up to the last record."""
    state, now, total = ExportState(), T0, 0
    records: list[Due] = []
    first = None
    for dt, more in looks:
        now, total = now + dt, total + more
        state, due = step(state, total, now, IMS)
        first = total if first is None else first
        if due is not None:
            records.append(due)
    for before, after in itertools.pairwise(records):
        assert after.k > before.k and after.total - after.wh == before.total
    if records:
        assert sum(r.wh for r in records) == records[-1].total - first
        assert all(r.k < now // IMS for r in records)


# ---- the meter ----------------------------------------------------------------------------


@pytest.fixture
def community(tmp_path):
    return provision(tmp_path / "c", meters=1, accounts=None, validators=1, now_ms=wall_ms() - 60_000)


def node_of(community, exporting_w: int = 3600) -> MeterNode:
    identity = MeterIdentity.load(community.root / "meters" / "m0001")
    config = MeterConfig(interval_s=IMS // 1000)
    return MeterNode(identity, config, "127.0.0.1", 9, sense=lambda _elapsed: (0, exporting_w))


def records(node: MeterNode) -> list[Export]:
    verifier = Verifier(cas=[node.id.ca_pk])
    rows = [r for r in node.store.outbox_after(0, 1000) if r.topic == topics.TX_EXPORT]
    return [verifier.verify(r.payload, wall_ms(), expect=Export).body for r in rows]


def export_seconds(node: MeterNode, start_ms: int, seconds: int) -> None:
    """`seconds` of sampling at 1 Hz on the node's monotonic clock from start_ms."""
    for s in range(seconds + 1):
        node.sample(s * 1000, start_ms + s * 1000)


def test_the_meter_sends_one_device_signed_record_per_interval_across_a_restart(community):
    """3600 W exported (1 Wh a second): each interval's record says what was exported in it;
    a restart in the middle of an interval neither repeats nor loses one."""
    node = node_of(community)
    now = (wall_ms() // IMS + 1) * IMS  # an interval start, in the wall clock's range
    assert node.prove_export(now) is None
    export_seconds(node, 0, 4)  # 4 Wh
    assert node.prove_export(now + IMS - 1) is None
    assert node.prove_export(now + IMS) == Due(now // IMS, 4, 4)
    export_seconds(node, 4_000, 3)  # 3 Wh more (the samples go on where they stopped)
    node.publish_reading()  # what a clean stop commits
    node.store.close()

    again = node_of(community)  # restarted within the same interval
    assert again.prove_export(now + IMS + 5_000) is None
    export_seconds(again, 20_000, 2)  # 2 Wh more
    assert again.prove_export(now + 2 * IMS) == Due(now // IMS + 1, 5, 9)
    got = records(again)
    assert [(r.meter, r.k, r.wh, r.total) for r in got] == [
        ("m0001", now // IMS, 4, 4),
        ("m0001", now // IMS + 1, 5, 9),
    ]
    assert got[0].cert == again.id.devcert
    assert again.store.totals().wms_out == 9 * WMS_PER_WH  # committed with the record
    again.store.close()


def test_a_meter_off_across_interval_ends_sends_what_it_measured_and_invents_nothing(community):
    node = node_of(community)
    now = (wall_ms() // IMS + 1) * IMS
    node.prove_export(now)
    export_seconds(node, 0, 3)
    node.publish_reading()
    node.store.close()
    again = node_of(community)
    assert again.prove_export(now + 4 * IMS + 1) == Due(now // IMS, 3, 3)
    export_seconds(again, 50_000, 2)
    assert again.prove_export(now + 5 * IMS) == Due(now // IMS + 4, 2, 5)
    assert [r.k for r in records(again)] == [now // IMS, now // IMS + 4]
    again.store.close()


def test_a_record_refused_too_early_goes_again_before_the_next_one(community):
    """The ledger takes a meter's records in interval order only (`counter`): a record it
    refused as too early (the meter's clock was ahead) is queued again, before the next
    interval's, at that interval's end, not resend_s later when the next is already in."""
    node = node_of(community)
    now = (wall_ms() // IMS + 1) * IMS
    node.prove_export(now)
    export_seconds(node, 0, 2)
    k = now // IMS
    assert node.prove_export(now + IMS) == Due(k, 2, 2)
    node.store.export_answered(k, "too-early", now + IMS + 100, resend=False)  # the ledger's answer
    node.store.delivered([r.seq for r in node.store.outbox_after(0, 1000)])  # the broker had it
    export_seconds(node, 2_000, 3)  # 3 Wh more, the samples going on where they stopped
    assert node.prove_export(now + 2 * IMS) == Due(k + 1, 3, 5)  # well within resend_s of the refusal
    assert [r.k for r in records(node)] == [k, k + 1]  # the earlier first, in one go
    node.store.close()
