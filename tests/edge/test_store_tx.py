"""edge.store.MeterStore (outbox, key ring, trades in one SQLite file), edge.tx (signing CTPs,
ERCs and cancels into it) and edge.config.MeterConfig, on real files in tmp_path."""

from __future__ import annotations

import sqlite3
import stat
import threading
from hashlib import sha256

import pytest
from nacl.signing import SigningKey

from edge import coe, tx
from edge.config import MeterConfig
from edge.energy import Totals
from edge.keyring import Batch, choose
from edge.store import COE, READING, TX, MeterStore
from wire import topics
from wire.messages import DevCert
from wire.verify import Verifier

NOW = 1_800_000_000_000
HOUR = 3_600_000
YEAR = 365 * 24 * HOUR
EXP = NOW + HOUR


def key(label: str) -> SigningKey:
    return SigningKey(sha256(f"store-tx tests/{label}".encode()).digest())


def pk(k: SigningKey) -> bytes:
    return bytes(k.verify_key)


CA, ME, PEER = key("ca"), key("device m0001"), key("device m0002")
ACCOUNT, PAYEE = key("account"), key("payee")


def devcert(meter: str, device: SigningKey) -> bytes:
    return DevCert(meter=meter, pk=pk(device), iss=pk(CA), nbf=NOW - YEAR, exp=NOW + YEAR).sign(CA)


def verifier() -> Verifier:
    return Verifier([pk(CA)])


def witnessed(store: MeterStore, size: int = 8, label: str = "b") -> Batch:
    """A batch in the store with a real CoE from peer m0002 (as the running meter gets one)."""
    seeds = b"".join(sha256(f"{label}/{i}".encode()).digest() for i in range(size))
    batch = store.add_batch(Batch.new(seeds, NOW))
    request = coe.request(batch, devcert("m0001", ME), ME, b"n" * 16, NOW)
    w = coe.Witness("m0002", devcert("m0002", PEER), PEER, verifier(), valid_ms=30 * 24 * HOUR, per_hour=12)
    _, raw = w.answer(request, set(), NOW)
    got = coe.accept(verifier(), raw, batch, "m0001", NOW)
    assert store.set_coe(batch.id, raw, got.t, got.exp)
    return store.batch(batch.id)


def new_ctp(store: MeterStore, wh: int = 5, exp: int = EXP):
    return tx.new_ctp(store, ACCOUNT, pk(PAYEE), 10, wh, exp, NOW)


def outbox(store: MeterStore) -> list[tuple[str, bytes]]:
    return [(o.topic, o.payload) for o in store.outbox_after(0, 10_000)]


def kinds(store: MeterStore) -> list[str]:
    return [k for (k,) in store._db.execute("SELECT kind FROM outbox ORDER BY seq")]


@pytest.fixture
def store(tmp_path):
    s = MeterStore(tmp_path / "meter.db")
    yield s
    s.close()


# ---- readings and the bounded outbox ----------------------------------------------------


def reading_signer(topic: str = "r"):
    return lambda seq: (topic, b"reading %d" % seq)


def test_fourth_reading_drops_the_oldest_reading_and_counts_it(tmp_path):
    """With outbox_max=3 readings, a 4th drops the oldest (later ones carry the same cumulative
    Wh), keeps the newest three in order, and counts each drop as outbox-full."""
    s = MeterStore(tmp_path / "meter.db", outbox_max=3)
    for i in range(1, 4):
        assert s.commit_reading(Totals(i, 0), reading_signer(), {}) == i
    assert s.dropped() == {}
    s.commit_reading(Totals(4, 0), reading_signer(), {})
    assert [p for _, p in outbox(s)] == [b"reading 2", b"reading 3", b"reading 4"]
    assert s.dropped() == {"outbox-full": 1}
    s.commit_reading(Totals(5, 0), reading_signer(), {})
    assert [p for _, p in outbox(s)] == [b"reading 3", b"reading 4", b"reading 5"]
    assert s.dropped() == {"outbox-full": 2}
    s.close()


def test_transactions_are_never_dropped(tmp_path):
    """Money never falls out of a full outbox: tx and coe rows stay, only readings are dropped,
    and a tx does not push a reading out either."""
    s = MeterStore(tmp_path / "meter.db", outbox_max=2)
    s.commit_reading(Totals(1, 0), reading_signer(), {})
    s.commit_reading(Totals(2, 0), reading_signer(), {})
    for i in range(5):
        s.enqueue(topics.TX_CTP, b"tx %d" % i, TX)
        s.enqueue("coe", b"coe %d" % i, COE)
    assert s.dropped() == {}
    for n in range(3, 6):
        s.commit_reading(Totals(n, 0), reading_signer(), {})
    payloads = [p for _, p in outbox(s)]
    assert [p for p in payloads if p.startswith(b"tx")] == [b"tx %d" % i for i in range(5)]
    assert [p for p in payloads if p.startswith(b"coe")] == [b"coe %d" % i for i in range(5)]
    assert [p for p in payloads if p.startswith(b"reading")] == [b"reading 4", b"reading 5"]
    assert s.dropped() == {"outbox-full": 3}
    assert kinds(s).count(READING) == 2
    s.close()


def test_reading_seq_survives_a_reopen_and_totals_never_decrease(tmp_path):
    """seq is never reused across reboots; lower totals are refused and consume no seq."""
    s = MeterStore(tmp_path / "meter.db")
    assert s.commit_reading(Totals(10, 10), reading_signer(), {}) == 1
    s.close()
    s = MeterStore(tmp_path / "meter.db")
    assert s.totals() == Totals(10, 10)
    with pytest.raises(ValueError):
        s.commit_reading(Totals(9, 10), reading_signer(), {})
    with pytest.raises(ValueError):
        s.commit_reading(Totals(10, 9), reading_signer(), {})
    assert s.commit_reading(Totals(10, 10), reading_signer(), {}) == 2
    assert s.outbox_size() == 2
    s.close()


def test_delivered_removes_exactly_the_acknowledged_rows(store):
    """delivered() deletes the given seqs and nothing else; outbox_after pages in seq order."""
    for i in range(5):
        store.enqueue("t", b"%d" % i, TX)
    rows = store.outbox_after(0, 10)
    store.delivered([rows[1].seq, rows[3].seq])
    assert [r.payload for r in store.outbox_after(0, 10)] == [b"0", b"2", b"4"]
    assert [r.payload for r in store.outbox_after(rows[1].seq, 1)] == [b"2"]


# ---- trades and key reservation -----------------------------------------------------------


def test_new_ctp_reserves_distinct_keys_in_order(store):
    """Each CTP reserves the batch's next key (0, 1, 2...), names the batch's root, and is in
    the outbox on tx/ctp."""
    batch = witnessed(store)
    rows = [new_ctp(store) for _ in range(3)]
    assert [r.idx for r in rows] == [0, 1, 2]
    assert {r.batch for r in rows} == {batch.id}
    assert store.batch(batch.id).next_idx == 3
    assert outbox(store) == [(topics.TX_CTP, r.ctp) for r in rows]
    for r in rows:
        body = verifier().verify(r.ctp, NOW, expect="ctp").body
        assert (body.id, body.meter, body.payer, body.payee, body.wh, body.exp) == (
            r.id,
            batch.root,
            pk(ACCOUNT),
            pk(PAYEE),
            5,
            EXP,
        )
        assert (r.state, r.sent, r.created, r.erc, r.cancel) == ("sent", NOW, NOW, None, None)


def test_new_ctp_moves_to_the_next_batch_when_one_is_used_up(store):
    """A used-up batch hands over to the next; no index is reserved twice across them."""
    first, second = witnessed(store, size=2, label="one"), witnessed(store, size=2, label="two")
    rows = [new_ctp(store) for _ in range(4)]
    assert [(r.batch, r.idx) for r in rows] == [(first.id, 0), (first.id, 1), (second.id, 0), (second.id, 1)]
    with pytest.raises(tx.TradeError, match="free key"):
        new_ctp(store)


def test_new_ctp_without_coe_is_a_trade_error(store):
    """No CoE yet: a TradeError that says so, and nothing is reserved or queued."""
    store.add_batch(Batch.new(b"\1" * 64, NOW))
    with pytest.raises(tx.TradeError, match="no key batch has a CoE yet"):
        new_ctp(store)
    assert store.trades() == [] and store.outbox_size() == 0 and store.batches()[0].next_idx == 0


def test_new_ctp_beyond_the_coe_is_a_trade_error(store):
    """A CTP expiring after the CoE does cannot be confirmed with that batch."""
    batch = witnessed(store)
    with pytest.raises(tx.TradeError):
        new_ctp(store, exp=batch.coe_exp + 1)
    assert store.trades() == [] and store.outbox_size() == 0


def test_failure_inside_make_ctp_rolls_everything_back(store):
    """All or nothing: if signing the CTP fails, no trade, no outbox row, and the key index is
    not consumed."""
    batch = witnessed(store)

    def make_ctp(b):
        raise RuntimeError("signing failed")

    with pytest.raises(RuntimeError):
        store.add_trade(lambda bs: choose(bs, NOW, EXP), make_ctp, NOW)
    assert store.trades() == []
    assert store.outbox_size() == 0
    assert store.batch(batch.id).next_idx == 0
    assert new_ctp(store).idx == 0


def test_unique_batch_idx_stops_a_buggy_caller_reusing_a_key(store):
    """UNIQUE(batch, idx): even a caller that hands add_trade a stale batch (next_idx already
    used) cannot record a second trade on the same key; nothing of it is kept."""
    witnessed(store)
    stale = store.batches()[0]
    new_ctp(store)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        store.add_trade(lambda bs: stale, lambda b: (b"x" * 16, b"raw", 1, EXP), NOW)
    assert len(store.trades()) == 1
    assert store.outbox_size() == 1
    assert store.batches()[0].next_idx == 1


# ---- confirm / cancel / resend --------------------------------------------------------------


def erc_rows(store: MeterStore) -> list[bytes]:
    return [p for t, p in outbox(store) if t == topics.TX_ERC]


def test_confirm_signs_an_erc_that_verifies_with_the_reserved_key(store):
    """The ERC verifies as the ledger checks it (CoE, witness devcert, proof, signature), names
    the CTP and the reserved index, carries the batch's CoE, and is queued on tx/erc."""
    batch = witnessed(store)
    new_ctp(store)
    r = new_ctp(store)
    done = tx.confirm(store, r.id, 5, NOW + 1000)
    body = verifier().verify(done.erc, NOW + 1000, expect="erc").body
    assert (body.ctp, body.wh, body.idx, body.t) == (r.id, 5, r.idx, NOW + 1000)
    assert r.idx == 1
    assert body.pk == pk(batch.key(r.idx))
    assert body.coe == batch.coe
    assert erc_rows(store) == [done.erc]
    assert store.trade(r.id).erc == done.erc and store.trade(r.id).sent == NOW + 1000


def test_confirm_twice_raises_and_leaves_one_erc(store):
    """A one-time key signs one ERC: the second confirm is a TradeError and changes nothing."""
    witnessed(store)
    r = new_ctp(store)
    first = tx.confirm(store, r.id, 5, NOW + 1)
    with pytest.raises(tx.TradeError):
        tx.confirm(store, r.id, 6, NOW + 2)
    assert erc_rows(store) == [first.erc]
    assert store.trade(r.id) == first


@pytest.mark.parametrize("state", ["settled", "refunded", "rejected"])
def test_confirm_of_a_finished_trade_raises(store, state):
    """No ERC for a trade that is over."""
    witnessed(store)
    r = new_ctp(store)
    store.update_trade(r.id, lambda row: row._replace(state=state))
    with pytest.raises(tx.TradeError, match=state):
        tx.confirm(store, r.id, 5, NOW + 1)
    assert erc_rows(store) == []


def test_confirm_or_cancel_of_an_unknown_trade_raises(store):
    witnessed(store)
    with pytest.raises(tx.TradeError):
        tx.confirm(store, b"?" * 16, 5, NOW)
    with pytest.raises(tx.TradeError):
        tx.cancel(store, ACCOUNT, b"?" * 16, NOW)
    assert store.outbox_size() == 0


def test_confirm_keeps_the_larger_delivered_energy(store):
    """delivered_wms only grows: confirm records the meter's count unless the store knows more."""
    witnessed(store)
    r = new_ctp(store)
    store.commit_reading(Totals(0, 0), reading_signer(), {r.id: 700})
    assert tx.confirm(store, r.id, 5, NOW + 1, delivered_wms=500).delivered_wms == 700
    r2 = new_ctp(store)
    assert tx.confirm(store, r2.id, 5, NOW + 1, delivered_wms=900).delivered_wms == 900


@pytest.mark.parametrize("round_", range(25))
def test_two_processes_racing_confirm_make_one_erc(tmp_path, round_):
    """The running meter and `spb-meter erc` (two connections on one file) confirming the same
    trade at the same moment: exactly one ERC is signed and queued, the other gets TradeError."""
    path = tmp_path / "meter.db"
    meter, command = MeterStore(path), MeterStore(path)
    witnessed(meter)
    trade = new_ctp(meter)
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def confirm(name: str, s: MeterStore) -> None:
        start.wait()
        try:
            results[name] = tx.confirm(s, trade.id, 5, NOW + 1)
        except tx.TradeError as exc:
            results[name] = exc

    threads = [threading.Thread(target=confirm, args=(n, s)) for n, s in (("meter", meter), ("command", command))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(type(v).__name__ for v in results.values()) == ["TradeError", "TradeRow"]
    assert len(erc_rows(meter)) == len(erc_rows(command)) == 1
    assert meter.trade(trade.id).erc == erc_rows(meter)[0]
    meter.close()
    command.close()


def test_cancel_is_signed_by_the_account_and_queued(store):
    """The cancel names the CTP and payer, verifies under the account key (ledger: not-payer
    otherwise), and is queued on tx/cancel."""
    witnessed(store)
    r = new_ctp(store)
    done = tx.cancel(store, ACCOUNT, r.id, EXP + 1)
    body = verifier().verify(done.cancel, EXP + 1, expect="cancel").body
    assert (body.ctp, body.payer, body.t) == (r.id, pk(ACCOUNT), EXP + 1)
    assert outbox(store)[-1] == (topics.TX_CANCEL, done.cancel)
    assert store.trade(r.id).cancel == done.cancel and store.trade(r.id).sent == EXP + 1


def test_resend_queues_the_same_bytes_again(store):
    """A resend queues the trade's existing message on its topic again; nothing is re-signed."""
    witnessed(store)
    r = new_ctp(store)
    erc = tx.confirm(store, r.id, 5, NOW + 1).erc
    tx.resend(store, r.id, topics.TX_CTP, NOW + 2)
    tx.resend(store, r.id, topics.TX_ERC, NOW + 3)
    assert outbox(store) == [(topics.TX_CTP, r.ctp), (topics.TX_ERC, erc), (topics.TX_CTP, r.ctp), (topics.TX_ERC, erc)]
    assert store.trade(r.id).sent == NOW + 3
    assert store.trade(r.id).erc == erc


def test_update_trade_that_raises_changes_nothing(store):
    """update_trade decides inside its transaction: an exception leaves row and outbox as they were."""
    witnessed(store)
    r = new_ctp(store)

    def make(row):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        store.update_trade(r.id, make, topics.TX_CTP)
    assert store.trade(r.id) == r and store.outbox_size() == 1


def test_store_file_is_private(tmp_path):
    """The file holds one-time key seeds: mode 0600, and so are SQLite's WAL files beside it."""
    s = MeterStore(tmp_path / "meter.db")
    witnessed(s)
    for name in ("meter.db", "meter.db-wal", "meter.db-shm"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    assert (tmp_path / "meter.db-wal").exists()
    s.close()


# ---- config ------------------------------------------------------------------------------


def test_config_defaults_without_a_file(tmp_path):
    """No config.toml: the documented defaults."""
    c = MeterConfig.load(tmp_path)
    assert c == MeterConfig()
    assert (c.sample_hz, c.reading_s, c.batch_size, c.coe_per_hour, c.outbox_max, c.display, c.led_pin) == (
        10.0,
        10.0,
        64,
        12,
        100_000,
        "none",
        17,
    )


def test_config_file_overrides_defaults(tmp_path):
    """config.toml values replace the defaults; `led_pin = "none"` means no LED."""
    (tmp_path / "config.toml").write_text('batch_size = 16\nreading_s = 2.5\ndisplay = "terminal"\nled_pin = "none"\n')
    c = MeterConfig.load(tmp_path)
    assert (c.batch_size, c.reading_s, c.display, c.led_pin) == (16, 2.5, "terminal", None)
    assert c.sample_hz == 10.0


def test_cli_override_beats_the_file_and_none_does_not(tmp_path):
    """A command-line value wins over config.toml; an option not given (None) leaves the file's."""
    (tmp_path / "config.toml").write_text("reading_s = 2.5\nsample_hz = 4\n")
    c = MeterConfig.load(tmp_path, reading_s=1.0, sample_hz=None, display="emu")
    assert (c.reading_s, c.sample_hz, c.display) == (1.0, 4, "emu")


def test_config_unknown_key_is_refused(tmp_path):
    """A typo must not leave a default silently in force."""
    (tmp_path / "config.toml").write_text("batch_size = 16\nreadings_s = 2\n")
    with pytest.raises(ValueError, match="readings_s"):
        MeterConfig.load(tmp_path)


@pytest.mark.parametrize(
    "line",
    [
        "sample_hz = 0",
        "sample_hz = 1001",
        "reading_s = 0",
        "import_channel = 8",
        "export_channel = -1",
        "export_channel = 0",
        "import_full_w = 0",
        "dead_band_w = -1",
        "batch_size = 0",
        "batch_size = 1025",
        "coe_days = 0",
        "coe_per_hour = 0",
        "outbox_max = 0",
        "resend_s = 0",
        'display = "hdmi"',
    ],
)
def test_config_bad_values_are_refused(tmp_path, line):
    """Values outside their range are refused at load, not discovered by a crash later."""
    (tmp_path / "config.toml").write_text(line + "\n")
    with pytest.raises(ValueError):
        MeterConfig.load(tmp_path)


def test_config_bad_override_is_refused(tmp_path):
    """A command-line override goes through the same checks."""
    with pytest.raises(ValueError):
        MeterConfig.load(tmp_path, sample_hz=5000.0)


def test_config_wrong_type_is_refused(tmp_path):
    """A string where a number belongs does not load (TypeError or ValueError, both reported by the CLI)."""
    (tmp_path / "config.toml").write_text('sample_hz = "fast"\n')
    with pytest.raises((TypeError, ValueError)):
        MeterConfig.load(tmp_path)


def test_config_malformed_toml_is_refused(tmp_path):
    (tmp_path / "config.toml").write_text("batch_size = \n")
    with pytest.raises(ValueError):
        MeterConfig.load(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "batch_size = 64.5",
        "outbox_max = 1e5",
        "coe_days = true",
        "display = 3",
        "led_pin = 40",
        "led_pin = 1.5",
        "night_start = 24",
        'sample_hz = "10"',
    ],
)
def test_config_values_of_the_wrong_type_or_range_are_refused(tmp_path, text):
    """Counts are whole numbers (batch_size = 64.5 would crash the meter making its first batch),
    pins and hours in range, text where text goes: refused at load, with the setting's name."""
    (tmp_path / "config.toml").write_text(text + "\n")
    with pytest.raises(ValueError, match=text.split(" ")[0]):
        MeterConfig.load(tmp_path)


def test_config_led_pin_none_and_float_rates_load(tmp_path):
    """\"none\" turns the LED off; whole numbers are fine where a number of seconds goes."""
    (tmp_path / "config.toml").write_text('led_pin = "none"\nreading_s = 5\nsample_hz = 2.5\n')
    config = MeterConfig.load(tmp_path)
    assert (config.led_pin, config.reading_s, config.sample_hz) == (None, 5, 2.5)
