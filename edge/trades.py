"""What a buying meter does with its trades: pure decisions on edge.store.TradeRow values.

A trade is the household's CTP and what follows: the ledger holds the money (`held`),
the meter counts the energy imported from then on and confirms it with an ERC once the
promised Wh arrived, and it cancels a promise that expired unconfirmed. Statuses are
only believed when they name our own messages (`msg`), so someone else's CTP that took
our id cannot move our trade. States never go backwards, whatever order messages arrive in.
"""

from __future__ import annotations

import hashlib

from edge.display import IDLE, View
from edge.energy import WMS_PER_WH, share_oldest_first
from edge.store import SENT, TradeRow
from wire import topics
from wire.messages import Cancel, CtpState, Status, open_message
from wire.reasons import TRANSIENT

OVERSOLD = "erc oversold"  # a trade's reason after the ledger refused its ERC as oversold (§9.4)
CANCEL_ROTATED = "cancel rotated"  # ... its cancel, signed by a key the household replaced since (§10.3)

HELD, SETTLED, REFUNDED, REJECTED = CtpState.HELD, CtpState.SETTLED, CtpState.REFUNDED, CtpState.REJECTED
OPEN = (SENT, HELD)
RESULT_MS = 10_000  # how long the display shows a trade's outcome
FINAL = (SETTLED, REFUNDED)
_RANK = {SENT: 0, REJECTED: 1, HELD: 2, SETTLED: 3, REFUNDED: 3}

ERC, CANCEL = "erc", "cancel"  # steps that need a new signature


def on_status(row: TradeRow, status: Status, ctp_hash: bytes, now: int) -> TradeRow | None:
    """The trade after a verified status about its id, or None if it changes nothing.

    A status is ours when its `msg` is our message: the CTP for held and rejected, our ERC
    for settled, our cancel (or none, at expiry) for refunded. A held or settled status
    naming another message means another CTP took our id first: the ledger can never hold
    ours (it answers it `duplicate`), so a trade still waiting ends as rejected. Once our
    CTP was held, though, the id's end is ours.
    """
    mine = {
        HELD: ctp_hash,
        REJECTED: ctp_hash,
        SETTLED: _hash(row.erc),
        REFUNDED: None if status.msg is None else _hash(row.cancel),
    }[status.state]
    if status.msg != mine and row.state == HELD and status.state in FINAL:
        # The ledger held our CTP under this id, so its end is ours, whoever caused it (say
        # a copy of this meter's store signing too): shown, never left hanging.
        return row._replace(state=status.state, reason="by a message this meter did not sign", changed=now)
    if status.msg != mine:
        if row.state == SENT and status.state in (HELD, SETTLED):
            return row._replace(state=REJECTED, reason="duplicate", changed=now)
        return None
    if _RANK[status.state] <= _RANK[row.state]:
        return None
    return row._replace(state=status.state, reason=status.reason or "", changed=now)


def _hash(raw: bytes | None) -> bytes | None:
    return None if raw is None else hashlib.sha256(raw).digest()


def on_reject(row: TradeRow, kind: str, reason: str, now: int, account: bytes = b"") -> TradeRow | None:
    """The trade after the ledger rejected its `kind` message ("ctp", "erc", "cancel").

    `duplicate` means it was applied before: the status says what came of it. A rejected
    ERC or cancel keeps the trade as it is (the reason is shown); it is sent again later
    if still useful, say a cancel that was `too-early` by the ledger's clock. A transient
    reason (`busy`: the ledger's pool was full, docs/PROTOCOL.md §4) decided nothing, so
    even a CTP stays `sent` and goes again after resend_s (see next_step). Neither is
    `oversold` (§9.4): the seller's export for the trade is not proved yet, so the trade
    stays held and the same ERC goes again after the next interval's end (OVERSOLD). A cancel
    refused `rotated` that a key other than our current `account` signed (before a rotation,
    §10.3) is dropped: the new key, which may cancel the old key's CTPs, signs the next.
    """
    if reason == "duplicate":
        return None
    if kind == "ctp" and reason not in TRANSIENT:
        return row._replace(state=REJECTED, reason=reason, changed=now) if row.state == SENT else None
    if row.state not in OPEN:
        return None
    if f"{kind} {reason}" == CANCEL_ROTATED and _cancelled_by(row) not in (None, account):
        return row._replace(cancel=None, reason=CANCEL_ROTATED)  # signed before a rotation: the new key signs it
    if f"{kind} {reason}" == OVERSOLD:  # the next try waits for the end of the interval refused in
        return row._replace(reason=OVERSOLD, sent=now)
    return row._replace(reason=f"{kind} {reason}")


def _cancelled_by(row: TradeRow) -> bytes | None:
    """Who signed the trade's cancel (its payer's key then); None if it has none."""
    return None if row.cancel is None else open_message(row.cancel, Cancel).body.payer


def allocate(rows: list[TradeRow], progress: dict[bytes, int], wms: int, now: int) -> list[TradeRow]:
    """Give newly imported energy to the held trades still waiting for it, oldest first,
    so two trades never count the same Wh; an expired one can no longer be confirmed and
    gets none. Updates `progress` (CTP id -> W·ms) in place; returns the trades that now
    have all their energy."""
    waiting = (row for row in rows if row.state == HELD and row.erc is None and now <= row.exp)
    return list(share_oldest_first(waiting, progress, wms))


def next_step(row: TradeRow, delivered_wms: int, now: int, resend_ms: int, interval_ms: int = 300_000) -> str | None:
    """What the trade needs now: ERC or CANCEL (a new signature), a topic to send its last
    message on again, or None.

    An ERC goes once the promised Wh arrived before expiry. After expiry plus resend_ms
    (the ledger refunds at expiry by itself; this is for when it did not) comes a cancel.
    A message still unanswered after resend_ms is sent again: the broker may have lost it.
    An unanswered CTP is sent again even after its expiry, because only an answer ends the
    trade: the ledger holds it (if it got it in time) or rejects it as `expired`. An ERC
    refused as `oversold` goes again once per interval, a tenth of an interval after the
    next end (when the seller's meter has sent its export record for it), until expiry.
    """
    stale = now - row.sent >= resend_ms
    if row.reason == OVERSOLD and row.erc is not None and row.cancel is None:
        stale = now >= retry_after_oversold(row.sent, interval_ms)
    if row.state == SENT:
        return topics.TX_CTP if stale else None  # after exp too: the ledger's `expired` ends it
    if row.state != HELD:
        return None
    if row.erc is None and delivered_wms >= row.wh * WMS_PER_WH and now <= row.exp:
        return ERC
    if now > row.exp + resend_ms and row.cancel is None:
        return CANCEL
    if not stale:
        return None
    if row.cancel is not None:
        return topics.TX_CANCEL
    return topics.TX_ERC if row.erc is not None and now <= row.exp else None


RECORD_MS = 1_000  # the least time an export record sent at an interval's end takes into a block


def retry_after_oversold(sent: int, interval_ms: int) -> int:
    """When an ERC refused as oversold at `sent` goes again: once the export records of the
    next interval end have had a tenth of an interval, and at least RECORD_MS, to reach a
    block. Refused within that margin after an end, the records of that end may still be on
    their way: it goes again at the margin's end, not an interval later (a fill's ERC that
    comes as its interval ends would otherwise miss its expiry). With a few seconds'
    intervals (`demo --day`) a tenth alone is less than a block round."""
    margin = max(interval_ms // 10, RECORD_MS)
    last_end = sent // interval_ms * interval_ms
    return last_end + margin if sent < last_end + margin else last_end + interval_ms + margin


def view(rows: list[TradeRow], progress: dict[bytes, int], now: int, online: bool, power_w: int) -> View:
    """What the household sees: an outcome of the last RESULT_MS, else the oldest held
    trade's progress, else idle with the power flowing now."""
    outcomes = [r for r in rows if r.state not in OPEN and now - r.changed < RESULT_MS]
    if outcomes:
        last = max(outcomes, key=lambda r: r.changed)
        return View(online=online, phase=last.state, reason=last.reason, power_w=power_w)
    held = [r for r in rows if r.state == HELD]
    if held:
        r = held[0]
        delivered = progress.get(r.id, r.delivered_wms) // WMS_PER_WH
        return View(online=online, phase=HELD, delivered_wh=delivered, promised_wh=r.wh, power_w=power_w)
    return View(online=online, phase=IDLE, power_w=power_w)
