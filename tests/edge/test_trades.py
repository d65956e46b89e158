"""edge.trades: the buying meter's pure decisions on its trades (statuses, rejects, sharing
imported energy between held trades, and what each trade needs next)."""

from __future__ import annotations

from hashlib import sha256

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.display import render
from edge.display_drivers import RecordingDisplay
from edge.energy import WMS_PER_WH
from edge.store import TradeRow
from edge.trades import CANCEL, ERC, RESULT_MS, allocate, next_step, on_reject, on_status, view
from wire import topics
from wire.messages import Status

NOW = 1_800_000_000_000
EXP = NOW + 3_600_000
RESEND = 30_000
CTP_RAW = b"our ctp bytes"
CTP_HASH = sha256(CTP_RAW).digest()
OTHER_HASH = sha256(b"another ctp with our id").digest()


def row(
    state: str = "sent",
    *,
    id: bytes = b"i" * 16,
    wh: int = 5,
    exp: int = EXP,
    delivered_wms: int = 0,
    erc: bytes | None = None,
    cancel: bytes | None = None,
    sent: int = NOW,
    reason: str = "",
    changed: int = NOW,
) -> TradeRow:
    return TradeRow(
        id=id,
        ctp=CTP_RAW,
        batch=1,
        idx=0,
        wh=wh,
        exp=exp,
        state=state,
        reason=reason,
        delivered_wms=delivered_wms,
        erc=erc,
        cancel=cancel,
        sent=sent,
        created=NOW,
        changed=changed,
    )


def status(state: str, msg: bytes | None = None, reason: str | None = None) -> Status:
    return Status(ctp=b"i" * 16, state=state, t=NOW, reason=reason, h=3, msg=msg)


LATER = NOW + 1000

# ---- on_status ---------------------------------------------------------------------------


def test_held_is_believed_when_it_names_our_ctp():
    """A held status whose msg is our CTP's hash moves a sent trade to held (and dates the change)."""
    new = on_status(row("sent"), status("held", CTP_HASH), CTP_HASH, LATER)
    assert (new.state, new.changed, new.reason) == ("held", LATER, "")


@pytest.mark.parametrize("msg", [OTHER_HASH, None])
def test_held_naming_another_ctp_ends_a_waiting_trade_as_duplicate(msg):
    """A held status about another CTP that took our id (or naming no message) does not hold
    our money: the ledger can never hold ours now, so our waiting trade ends as rejected."""
    new = on_status(row("sent"), status("held", msg), CTP_HASH, LATER)
    assert (new.state, new.reason, new.changed) == ("rejected", "duplicate", LATER)


def test_held_naming_another_ctp_leaves_a_held_trade_alone():
    """Once our own CTP is held, a status naming another message is not about it."""
    assert on_status(row("held"), status("held", OTHER_HASH), CTP_HASH, LATER) is None


@pytest.mark.parametrize("msg", [OTHER_HASH, None])
def test_rejected_naming_another_ctp_is_ignored(msg):
    """A rejected status is ours only if it names our CTP."""
    assert on_status(row("sent"), status("rejected", msg, "insufficient-funds"), CTP_HASH, LATER) is None


def test_rejected_naming_our_ctp_records_its_reason():
    """Our CTP rejected by the ledger: state rejected, the reason kept for the display."""
    new = on_status(row("sent"), status("rejected", CTP_HASH, "insufficient-funds"), CTP_HASH, LATER)
    assert (new.state, new.reason, new.changed) == ("rejected", "insufficient-funds", LATER)


@pytest.mark.parametrize(
    "current, late",
    [
        ("held", status("held", CTP_HASH)),
        ("held", status("rejected", CTP_HASH, "insufficient-funds")),
        ("settled", status("held", CTP_HASH)),
        ("settled", status("rejected", CTP_HASH, "expired")),
        ("settled", status("refunded")),
        ("settled", status("settled", OTHER_HASH)),
        ("refunded", status("held", CTP_HASH)),
        ("refunded", status("settled", OTHER_HASH)),
        ("refunded", status("refunded")),
    ],
)
def test_states_never_go_backwards_and_final_states_stay(current, late):
    """Statuses arrive in any order (retained, redelivered): a late held after settled, a
    settled after refunded, a repeat of the same state change nothing."""
    assert on_status(row(current), late, CTP_HASH, LATER) is None


def test_rejected_then_held_is_allowed():
    """A held status naming our CTP overrides an earlier rejection (the held one is the ledger's
    latest word on our CTP)."""
    new = on_status(row("rejected", reason="insufficient-funds"), status("held", CTP_HASH), CTP_HASH, LATER)
    assert (new.state, new.reason) == ("held", "")


@pytest.mark.parametrize("final", ["settled", "refunded"])
def test_held_trade_reaches_its_final_state(final):
    """settled (msg: the ERC) and refunded (msg: a cancel, or none at expiry) end a held trade."""
    msg = sha256(b"erc").digest() if final == "settled" else None
    new = on_status(row("held", erc=b"erc" if final == "settled" else None), status(final, msg), CTP_HASH, LATER)
    assert (new.state, new.changed) == (final, LATER)


def test_a_sent_trade_whose_held_was_missed_still_settles():
    """A meter offline while its CTP was held sees only the retained settled status: its trade
    (which signed the ERC) is settled all the same."""
    erc = b"our erc"
    new = on_status(row("sent", erc=erc), status("settled", sha256(erc).digest()), CTP_HASH, LATER)
    assert new.state == "settled"


def test_settled_of_another_ctp_with_our_id_does_not_settle_our_trade():
    """Someone else's CTP with our id cannot move our trade to settled: a trade that never
    signed an ERC cannot have been settled (its one-time key is only in our store). It ends
    as rejected, since the ledger will never hold ours."""
    new = on_status(row("sent", erc=None), status("settled", sha256(b"their erc").digest()), CTP_HASH, LATER)
    assert (new.state, new.reason) == ("rejected", "duplicate")


def test_a_held_trade_ends_whoever_ended_it_and_says_so():
    """Once our CTP was held, the id's end is ours even when the status names a message this
    meter did not sign (a copy of its store signing too): shown, never left hanging."""
    ours = on_status(
        row("held", cancel=b"our cancel"), status("refunded", sha256(b"our cancel").digest()), CTP_HASH, LATER
    )
    assert (ours.state, ours.reason) == ("refunded", "")
    theirs = on_status(row("held", cancel=b"our cancel"), status("refunded", OTHER_HASH), CTP_HASH, LATER)
    assert (theirs.state, theirs.reason) == ("refunded", "by a message this meter did not sign")
    settled = on_status(row("held", erc=None), status("settled", OTHER_HASH), CTP_HASH, LATER)
    assert (settled.state, settled.reason) == ("settled", "by a message this meter did not sign")


# ---- on_reject ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ctp", "erc", "cancel"])
@pytest.mark.parametrize("state", ["sent", "held", "settled", "refunded", "rejected"])
def test_duplicate_reject_is_ignored(kind, state):
    """`duplicate` means that message was applied before: the status tells the outcome."""
    assert on_reject(row(state), kind, "duplicate", LATER) is None


def test_ctp_reject_moves_a_sent_trade_to_rejected():
    """Our CTP rejected (say for insufficient funds): the trade ends, with the reason."""
    new = on_reject(row("sent"), "ctp", "insufficient-funds", LATER)
    assert (new.state, new.reason, new.changed) == ("rejected", "insufficient-funds", LATER)


def test_a_busy_ctp_stays_sent_and_goes_again():
    """`busy` decided nothing (the ledger's pool was full): the trade stays open with the
    reason shown, and the CTP is sent again once resend_ms passed without an answer."""
    new = on_reject(row("sent"), "ctp", "busy", LATER)
    assert (new.state, new.reason) == ("sent", "ctp busy")
    assert next_step(new, 0, new.sent + 10_000, 10_000) == topics.TX_CTP


@pytest.mark.parametrize("state", ["held", "settled", "refunded", "rejected"])
def test_ctp_reject_moves_only_a_sent_trade(state):
    """A CTP reject for a trade already held or final (a late reject of a resend) changes nothing."""
    assert on_reject(row(state), "ctp", "expired", LATER) is None


@pytest.mark.parametrize("kind, reason", [("erc", "expired"), ("erc", "energy-short"), ("cancel", "too-early")])
@pytest.mark.parametrize("state", ["sent", "held"])
def test_erc_or_cancel_reject_keeps_the_state_and_records_the_reason(kind, reason, state):
    """A rejected ERC or cancel does not end the trade (it may be sent again once things
    change); the reason, prefixed by the kind, is recorded for the display."""
    new = on_reject(row(state, erc=b"e", cancel=b"c"), kind, reason, LATER)
    assert new.state == state
    assert new.reason == f"{kind} {reason}"
    assert (new.erc, new.cancel) == (b"e", b"c")


@pytest.mark.parametrize("state", ["settled", "refunded", "rejected"])
def test_erc_or_cancel_reject_of_a_final_trade_changes_nothing(state):
    """After the end, a late reject of a resent ERC or cancel is noise."""
    assert on_reject(row(state), "erc", "not-held", LATER) is None
    assert on_reject(row(state), "cancel", "not-held", LATER) is None


# ---- allocate ----------------------------------------------------------------------------


def held(n: int, wh: int, delivered_wms: int = 0, **kw) -> TradeRow:
    return row("held", id=bytes([n]) * 16, wh=wh, delivered_wms=delivered_wms, **kw)


def test_allocate_fills_the_oldest_trade_first():
    """1.5 Wh imported for two 1 Wh trades: the older gets its full 1 Wh, the newer 0.5 Wh."""
    a, b = held(1, 1), held(2, 1)
    progress: dict[bytes, int] = {}
    allocate([a, b], progress, 3 * WMS_PER_WH // 2, NOW)
    assert progress == {a.id: WMS_PER_WH, b.id: WMS_PER_WH // 2}


def test_allocate_continues_from_stored_progress_and_stops_at_need():
    """A trade's progress starts from what the store recorded; it never gets more than it needs."""
    a = held(1, 2, delivered_wms=WMS_PER_WH + 10)
    progress: dict[bytes, int] = {}
    allocate([a], progress, 5 * WMS_PER_WH, NOW)
    assert progress == {a.id: 2 * WMS_PER_WH}


def test_allocate_prefers_the_in_memory_progress():
    """progress (ahead of the store) wins over the row's stored delivered_wms."""
    a = held(1, 2, delivered_wms=0)
    progress = {a.id: WMS_PER_WH}
    allocate([a], progress, WMS_PER_WH // 2, NOW)
    assert progress == {a.id: 3 * WMS_PER_WH // 2}


def test_allocate_skips_trades_with_an_erc_and_trades_not_held():
    """A confirmed trade (ERC signed) and trades not held get nothing; the energy goes on."""
    done, sent, final, open_ = held(1, 1, erc=b"e"), row("sent", id=b"s" * 16), row("settled", id=b"f" * 16), held(4, 1)
    progress: dict[bytes, int] = {}
    allocate([done, sent, final, open_], progress, WMS_PER_WH // 3, NOW)
    assert progress == {open_.id: WMS_PER_WH // 3}


def test_allocate_gives_an_expired_trade_nothing_and_reports_the_complete_ones():
    """An expired trade can no longer be confirmed: the energy goes to the next one, so a
    newer trade is not starved while the refund of an old one is on its way. allocate
    returns the trades that just got all their energy."""
    late, live, other = held(1, 1, exp=NOW - 1), held(2, 1), held(3, 5)
    progress: dict[bytes, int] = {}
    assert allocate([late, live, other], progress, 2 * WMS_PER_WH, NOW) == [live]
    assert progress == {live.id: WMS_PER_WH, other.id: WMS_PER_WH}
    assert allocate([late, live, other], progress, WMS_PER_WH, NOW) == []


def test_allocate_of_nothing_changes_nothing():
    progress: dict[bytes, int] = {}
    allocate([held(1, 1)], progress, 0, NOW)
    assert progress == {}


trade_rows = st.lists(
    st.tuples(
        st.sampled_from(["held", "held", "held", "sent", "settled"]),
        st.booleans(),
        st.integers(0, 5),
        st.integers(0, 6 * WMS_PER_WH),
        st.one_of(st.none(), st.integers(0, 6 * WMS_PER_WH)),
    ),
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(trade_rows, st.integers(0, 40 * WMS_PER_WH))
def test_allocate_hands_out_exactly_what_was_imported_up_to_the_need(specs, wms):
    """Property: the energy handed out is min(imported, total remaining need of the held
    trades without ERC); no trade exceeds its need; others are untouched; and a newer trade
    only gets energy once every older waiting trade is full (oldest first)."""
    rows, progress = [], {}
    for n, (state, has_erc, wh, stored, ahead) in enumerate(specs):
        r = row(state, id=n.to_bytes(16, "big"), wh=wh, delivered_wms=stored, erc=b"e" if has_erc else None)
        rows.append(r)
        if ahead is not None:
            progress[r.id] = ahead
    before = dict(progress)
    allocate(rows, progress, wms, NOW)

    def have(r, p):
        return p.get(r.id, r.delivered_wms)

    eligible = [r for r in rows if r.state == "held" and r.erc is None]
    need = sum(max(0, r.wh * WMS_PER_WH - have(r, before)) for r in eligible)
    given_out = sum(have(r, progress) - have(r, before) for r in rows)
    assert given_out == min(wms, need)
    for r in rows:
        got = have(r, progress) - have(r, before)
        assert got >= 0
        if r not in eligible:
            assert progress.get(r.id) == before.get(r.id)
        elif got:
            assert have(r, progress) <= r.wh * WMS_PER_WH
    for i, r in enumerate(eligible):
        if have(r, progress) > have(r, before):
            assert all(have(o, progress) >= o.wh * WMS_PER_WH for o in eligible[:i])


# ---- next_step ---------------------------------------------------------------------------

FULL = 5 * WMS_PER_WH  # a 5 Wh trade's energy


def test_sent_ctp_is_resent_when_stale_even_after_expiry():
    """An unanswered CTP goes again after resend_ms, not before; after its expiry too, since
    only the ledger's answer (held, or `expired`) ends the trade (decision 0003)."""
    r = row("sent", sent=NOW)
    assert next_step(r, 0, NOW + RESEND - 1, RESEND) is None
    assert next_step(r, 0, NOW + RESEND, RESEND) == topics.TX_CTP
    expired = row("sent", sent=NOW, exp=NOW + 1)
    assert next_step(expired, 0, NOW + RESEND - 1, RESEND) is None
    assert next_step(expired, 0, NOW + RESEND, RESEND) == topics.TX_CTP
    assert next_step(expired, FULL, NOW + 100 * RESEND, RESEND) == topics.TX_CTP  # never an ERC or cancel


def test_erc_exactly_when_the_promised_wh_arrived_before_expiry():
    """The ERC is signed once delivered reaches wh (not one W·ms before), at any time up to exp."""
    r = row("held", sent=NOW)
    assert next_step(r, FULL - 1, NOW + 1, RESEND) is None
    assert next_step(r, FULL, NOW + 1, RESEND) == ERC
    assert next_step(r, FULL + 7, EXP, RESEND) == ERC
    assert next_step(r, FULL, EXP + 1, RESEND) is None  # too late: the ledger would say `expired`


def test_erc_is_due_even_when_stale():
    """A held trade with all its energy confirms, whatever its resend clock says."""
    assert next_step(row("held", sent=NOW - 10 * RESEND), FULL, NOW, RESEND) == ERC


def test_cancel_only_after_expiry_plus_resend():
    """An unconfirmed held trade is cancelled after exp + resend_ms (the ledger refunds at exp
    by itself; this is for when it did not), not at exactly that time."""
    r = row("held", sent=NOW)
    assert next_step(r, 0, EXP + RESEND, RESEND) is None
    assert next_step(r, 0, EXP + RESEND + 1, RESEND) == CANCEL
    assert next_step(row("held", sent=NOW, erc=b"e"), FULL, EXP + RESEND + 1, RESEND) == CANCEL


def test_erc_is_resent_when_stale_before_expiry():
    """A signed ERC with no answer goes again after resend_ms, only while the CTP has not expired."""
    r = row("held", erc=b"e", sent=NOW)
    assert next_step(r, FULL, NOW + RESEND - 1, RESEND) is None
    assert next_step(r, FULL, NOW + RESEND, RESEND) == topics.TX_ERC
    late = row("held", erc=b"e", sent=EXP - RESEND)
    assert next_step(late, FULL, EXP, RESEND) == topics.TX_ERC
    assert next_step(late, FULL, EXP + 1, RESEND) is None


def test_cancel_is_resent_when_stale():
    """A signed cancel with no answer goes again after resend_ms; never a second signature."""
    r = row("held", cancel=b"c", sent=EXP + RESEND + 1)
    assert next_step(r, 0, EXP + 2 * RESEND, RESEND) is None
    assert next_step(r, 0, EXP + 2 * RESEND + 1, RESEND) == topics.TX_CANCEL
    assert next_step(row("held", cancel=b"c", erc=b"e", sent=NOW), FULL, EXP + 5 * RESEND, RESEND) == topics.TX_CANCEL


@pytest.mark.parametrize("state", ["settled", "refunded", "rejected"])
@pytest.mark.parametrize("now", [NOW, EXP, EXP + RESEND + 1, EXP + 100 * RESEND])
def test_nothing_for_final_or_rejected_trades(state, now):
    """A finished trade is never sent, confirmed or cancelled again."""
    for r in (row(state, sent=NOW - RESEND), row(state, erc=b"e", cancel=b"c", sent=NOW - RESEND)):
        assert next_step(r, FULL, now, RESEND) is None


def test_nothing_for_a_held_trade_waiting_for_energy():
    """A held trade short of energy, before expiry, needs nothing (the CTP was answered)."""
    assert next_step(row("held", sent=NOW - 100 * RESEND), FULL - 1, NOW, RESEND) is None


# ---- view: what the Sense HAT shows --------------------------------------------------------


def test_view_shows_a_fresh_outcome_then_the_oldest_held_trade_then_idle():
    """The household sees an outcome for RESULT_MS (the latest if several), otherwise the
    progress of the oldest held trade, otherwise idle with the power flowing now."""
    older = row("held", id=b"a" * 16, wh=10, delivered_wms=4 * WMS_PER_WH)
    newer = row("held", id=b"b" * 16, wh=10)
    settled = row("settled", id=b"c" * 16, changed=NOW)
    rejected = row("rejected", id=b"d" * 16, reason="insufficient-funds", changed=NOW + 1)
    progress = {older.id: 5 * WMS_PER_WH}

    shown = view([older, newer, settled, rejected], progress, NOW + 100, True, 1500)
    assert (shown.phase, shown.reason) == ("rejected", "insufficient-funds")
    shown = view([older, newer, settled], progress, NOW + 100, True, 1500)
    assert shown.phase == "settled"
    shown = view([older, newer, settled], progress, NOW + RESULT_MS, False, 1500)
    assert (shown.phase, shown.delivered_wh, shown.promised_wh, shown.online) == ("held", 5, 10, False)
    assert view([], {}, NOW, True, -800).phase == "idle"

    # The frames a Sense HAT stand-in is given for these views: half the bar lit, then all green.
    hat = RecordingDisplay()
    for v in (view([older], progress, NOW, True, 0), view([settled], {}, NOW + 100, True, 0)):
        hat.show(render(v, NOW), False)
    (bar, _), (green, _) = hat.shown
    assert sum(p != (0, 0, 0) for p in bar) == 32
    assert len(set(green)) == 1 and green[0][1] > 0 == green[0][0]
