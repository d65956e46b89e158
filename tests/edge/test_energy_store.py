"""edge.energy.Totals (exact integer energy) and edge.store.MeterStore (durable counters in SQLite)."""

from __future__ import annotations

import pytest

from edge.energy import WMS_PER_WH, Totals
from edge.store import MeterStore

# ---- Totals ------------------------------------------------------------------------------


def test_one_wh_is_exactly_3_600_000_wms():
    """1500 W imported for 2400 ms is 3,600,000 W·ms, which is exactly 1 Wh."""
    t = Totals().add(1500, 0, 2400)
    assert (t.wms_in, t.wms_out) == (3_600_000, 0)
    assert (t.wh_in, t.wh_out) == (1, 0)
    assert WMS_PER_WH == 3_600_000


def test_export_goes_to_its_own_counter():
    """Exported power adds to the export counter and leaves import alone."""
    t = Totals().add(1500, 0, 2400).add(0, 2000, 1800)
    assert (t.wms_in, t.wms_out) == (3_600_000, 3_600_000)
    assert (t.wh_in, t.wh_out) == (1, 1)


def test_both_directions_in_one_interval():
    """The two channels are independent: import and export in the same interval both count."""
    assert Totals(1, 2).add(3, 5, 7) == Totals(1 + 21, 2 + 35)


def test_wh_are_whole_and_never_rounded_up():
    """One W·ms short of a Wh is 0 Wh; the last W·ms makes it 1 (floor, never invented energy)."""
    almost = Totals().add(1, 0, WMS_PER_WH - 1)
    assert almost.wh_in == 0
    assert almost.add(1, 0, 1).wh_in == 1
    assert Totals().add(0, 1, WMS_PER_WH - 1).wh_out == 0


def test_many_small_steps_equal_one_big_step_exactly():
    """Integration in integers loses nothing: 1000 steps of 7 W·1 ms equal 7 W for 1000 ms."""
    stepped = Totals()
    for _ in range(1000):
        stepped = stepped.add(7, 3, 1)
    assert stepped == Totals().add(7, 3, 1000) == Totals(7000, 3000)


def test_large_values_stay_exact():
    """No float anywhere: a 10 MW flow for ten years is still exact to the W·ms."""
    ten_years_ms = 10 * 365 * 86_400_000
    t = Totals().add(10_000_000, 0, ten_years_ms).add(1, 0, 1)
    assert t.wms_in == 10_000_000 * ten_years_ms + 1
    assert t.wh_in == (10_000_000 * ten_years_ms + 1) // WMS_PER_WH


def test_zero_power_or_zero_time_adds_nothing():
    """0 W or 0 ms leaves both counters where they were."""
    start = Totals(5, 6)
    assert start.add(0, 0, 1000) == start
    assert start.add(1500, 1500, 0) == start


def test_add_returns_new_totals_and_leaves_the_old_one():
    """Totals is a value: add() never changes the instance it was called on."""
    start = Totals()
    after = start.add(1500, 0, 2400)
    assert start == Totals(0, 0)
    assert after is not start


def test_negative_dt_raises():
    """Time only runs forwards: a negative interval is refused, whatever the power."""
    with pytest.raises(ValueError):
        Totals().add(1500, 0, -1)
    with pytest.raises(ValueError):
        Totals().add(0, 1500, -1)


@pytest.mark.parametrize("w_in, w_out", [(-1, 0), (0, -1), (-5, -5)])
def test_negative_power_raises(w_in, w_out):
    """Each channel is a magnitude: a negative one is a bug upstream, never silently an export."""
    with pytest.raises(ValueError):
        Totals().add(w_in, w_out, 1000)


# ---- MeterStore --------------------------------------------------------------------------


def commit(store: MeterStore, totals: Totals) -> int:
    """commit_reading with a stand-in for the signed reading; its seq."""
    return store.commit_reading(totals, lambda seq: ("spb/v1/meters/m0001/reading", b"reading %d" % seq), {})


@pytest.fixture
def open_store(tmp_path):
    """open_store(): a MeterStore on the same meter.db each time (a reopen simulates a reboot)."""
    opened: list[MeterStore] = []
    path = tmp_path / "meter.db"

    def open_() -> MeterStore:
        store = MeterStore(path)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def test_fresh_store_starts_at_zero(open_store):
    """A new meter.db has zero energy and its first reading gets seq 1, its first boot is 1."""
    store = open_store()
    assert store.totals() == Totals(0, 0)
    assert store.next_boot() == 1
    assert commit(store, Totals(0, 0)) == 1


def test_boot_counter_counts_every_start_across_reopen(open_store):
    """next_boot() increments by one each call and continues after the file is reopened."""
    first = open_store()
    assert [first.next_boot(), first.next_boot()] == [1, 2]
    first.close()
    assert open_store().next_boot() == 3
    assert open_store().next_boot() == 4


def test_reading_seqs_increase_and_continue_after_reboot(open_store):
    """seq is never reused (§4): strictly increasing, and a reopened store continues above the last."""
    store = open_store()
    totals = Totals()
    seqs = []
    for _ in range(3):
        totals = totals.add(1500, 0, 2400)
        seqs.append(commit(store, totals))
    assert seqs == [1, 2, 3]
    store.close()

    rebooted = open_store()
    rebooted.next_boot()
    assert [commit(rebooted, totals), commit(rebooted, totals.add(0, 10, 10))] == [4, 5]


def test_totals_persist_across_reopen(open_store):
    """The totals of the last committed reading are what a rebooted meter starts from."""
    store = open_store()
    totals = Totals().add(1500, 0, 2400).add(0, 2000, 9000)
    commit(store, totals)
    store.close()
    assert open_store().totals() == totals == Totals(3_600_000, 18_000_000)


def test_committed_reading_is_visible_to_another_connection_at_once(open_store):
    """commit_reading returns only after the transaction is committed (another reader sees it)."""
    writer, reader = open_store(), open_store()
    commit(writer, Totals(10, 20))
    assert reader.totals() == Totals(10, 20)
    assert commit(reader, Totals(10, 20)) == 2


@pytest.mark.parametrize("smaller", [Totals(99, 200), Totals(100, 199), Totals(0, 0)])
def test_decreasing_totals_raise_without_consuming_a_seq(open_store, smaller):
    """Energy never goes backwards: a smaller total raises ValueError, and neither seq nor totals move."""
    store = open_store()
    assert commit(store, Totals(100, 200)) == 1
    with pytest.raises(ValueError):
        commit(store, smaller)
    assert store.totals() == Totals(100, 200)
    assert commit(store, Totals(100, 200)) == 2  # equal totals are fine: no energy flowed


def test_each_committed_reading_is_in_the_outbox_in_seq_order(open_store):
    """The reading a seq was used for is queued in the same transaction, so no seq goes unsent."""
    store = open_store()
    for i in range(3):
        commit(store, Totals(i, 0))
    assert [(row.topic, row.payload) for row in store.outbox_after(0, 10)] == [
        ("spb/v1/meters/m0001/reading", b"reading %d" % seq) for seq in (1, 2, 3)
    ]


def test_peer_births_survive_a_reboot_and_the_latest_wins(open_store):
    """A rebooted meter still knows its peers' births, so readings queued for it verify."""
    store = open_store()
    store.save_peer_birth("m0002", b"first")
    store.save_peer_birth("m0003", b"other")
    store.save_peer_birth("m0002", b"second")
    store.close()
    assert open_store().peer_births() == [("m0002", b"second"), ("m0003", b"other")]


def test_an_unchanged_peer_birth_writes_nothing(open_store):
    """Retained births come again on every reconnect; only a changed one is a write."""
    store = open_store()
    store.save_peer_birth("m0002", b"birth")
    changes = store._db.total_changes
    store.save_peer_birth("m0002", b"birth")
    assert store._db.total_changes == changes
    store.save_peer_birth("m0002", b"reborn")
    assert store._db.total_changes == changes + 1
    assert store.peer_births() == [("m0002", b"reborn")]
