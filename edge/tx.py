"""Signing a household's CTPs, ERCs and cancels into the meter's store and outbox.

Shared by the running meter and the `spb-meter ctp|erc` commands, which may run at the
same time on the same state dir: every decision is re-made inside the store transaction
that records it, so a one-time key signs one ERC only.
"""

from __future__ import annotations

import os

from nacl.signing import SigningKey

from edge import keyring
from edge.store import MeterStore, TradeRow
from wire import topics
from wire.messages import Cancel, Ctp, CtpState, Erc


class TradeError(Exception):
    """A trade command that cannot be done; the message says why."""


def new_ctp(
    store: MeterStore,
    account: SigningKey,
    payee: bytes,
    amount: int,
    wh: int,
    exp: int,
    now: int,
    src: str | None = None,
) -> TradeRow:
    """Promise `amount` units to `payee` for `wh` delivered before `exp`, naming the root of
    the batch whose reserved key will confirm it; queued in the outbox."""

    def make_ctp(batch: keyring.Batch):
        ctp_id = os.urandom(16)
        raw = Ctp(
            id=ctp_id,
            payer=bytes(account.verify_key),
            payee=payee,
            amount=amount,
            wh=wh,
            exp=exp,
            meter=batch.root,
            t=now,
            src=src,
        ).sign(account)
        return ctp_id, raw, wh, exp

    try:
        return store.add_trade(lambda batches: keyring.choose(batches, now, exp), make_ctp, now)
    except keyring.NoKey as exc:
        raise TradeError(str(exc)) from None


def confirm(
    store: MeterStore, ctp_id: bytes, wh: int, now: int, delivered_wms: int | None = None, force: bool = False
) -> TradeRow:
    """Sign the trade's ERC for `wh` received with its reserved one-time key, and queue it.

    The key signs one ERC only, so one the ledger is sure to refuse (fewer Wh than promised,
    after expiry) is refused here unless `force`d: it would leave the trade unconfirmable."""

    def make(row: TradeRow) -> TradeRow:
        if row.erc is not None:
            raise TradeError("this trade's ERC was signed already; its one-time key signs nothing else")
        if row.state in (CtpState.SETTLED, CtpState.REFUNDED, CtpState.REJECTED):
            raise TradeError(f"the trade is {row.state}")
        if not force and wh < row.wh:
            raise TradeError(
                f"{wh} Wh is less than the {row.wh} Wh promised: the ledger would refuse it "
                "(energy-short) and the trade's one key would be spent (--force to sign anyway)"
            )
        if not force and now > row.exp:
            raise TradeError("the trade has expired: the ledger would refuse its ERC (--force to sign anyway)")
        batch = store.batch(row.batch)
        assert batch.coe is not None, "a trade's key comes from a batch with a CoE (keyring.choose)"
        key = batch.key(row.idx)
        erc = Erc(
            ctp=row.id, wh=wh, t=now, pk=bytes(key.verify_key), idx=row.idx, path=batch.proof(row.idx), coe=batch.coe
        ).sign(key)
        delivered = row.delivered_wms if delivered_wms is None else max(row.delivered_wms, delivered_wms)
        return row._replace(erc=erc, sent=now, delivered_wms=delivered)

    return _update(store, ctp_id, make, topics.TX_ERC)


def cancel(store: MeterStore, account: SigningKey, ctp_id: bytes, now: int) -> TradeRow:
    """Ask for the money back of a trade that expired unconfirmed, and queue the request."""

    def make(row: TradeRow) -> TradeRow:
        raw = Cancel(ctp=row.id, payer=bytes(account.verify_key), t=now).sign(account)
        return row._replace(cancel=raw, sent=now)

    return _update(store, ctp_id, make, topics.TX_CANCEL)


def resend(store: MeterStore, ctp_id: bytes, topic: str, now: int) -> TradeRow | None:
    """Queue the trade's message for `topic` again (the broker may have lost it)."""
    return store.update_trade(ctp_id, lambda row: row._replace(sent=now), queue_topic=topic)


def _update(store: MeterStore, ctp_id: bytes, make, topic: str) -> TradeRow:
    row = store.update_trade(ctp_id, make, queue_topic=topic)
    if row is None:
        raise TradeError(f"no trade {ctp_id.hex()} on this meter")
    return row
