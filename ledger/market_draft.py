"""A block's market rules (docs/PROTOCOL.md §9.2-§9.4), as the part of ledger.draft.Draft
that reads and collects the market: orders with their escrow, sealed bids, withdrawals,
export records, the clearing of each interval whose time came, and delivery (§9.4).

Like the rest of a Draft it writes nothing into the committed state: every change goes
into the overlays below, which `market_changes` hands to LedgerState.commit. The stateful
checks of each message type run in §9.2's order, first failure wins, and a rejected
message changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from hashlib import sha256
from typing import TYPE_CHECKING, Any

from ledger.fill import FillDoc, free_fill_id
from ledger.genesis import MeterEntry
from ledger.market import Escrowed, ExportRecord, MarketChanges, MarketState, OrderRecord, Result, clear_book
from wire import topics
from wire.messages import Ask, Bid, DevCert, Export, Opened, OrderState, Reveal, Seal, Withdraw, open_message
from wire.reasons import Reject

if TYPE_CHECKING:
    from ledger.draft import Draft
    from ledger.state import CtpRecord


class MarketDraft:
    """The market overlay of one Draft (`draft.market`), None on a v1 chain."""

    def __init__(self, draft: Draft, base: MarketState):
        self.draft, self.base, self.terms = draft, base, base.terms
        self.orders: dict[bytes, OrderRecord] = {}  # new or changed
        self.revealed: dict[bytes, bytes] = {}
        self.by_k: dict[int, list[bytes]] = {}  # orders this draft accepted, per interval
        self.pending: dict[int, int] = {}
        self.results: dict[int, Result] = {}
        self.exports: dict[tuple[str, int], ExportRecord] = {}
        self.ks: dict[str, list[int]] = {}  # export intervals this draft added per meter (after the base's)

    # -- reads through the overlay --

    def order(self, order_id: bytes, k: int | None = None) -> OrderRecord | None:
        """The order with this id (k: its interval, if known; see MarketState.order)."""
        record = self.orders.get(order_id)
        return record if record is not None else self.base.order(order_id, k)

    def in_book(self, book_id: bytes, k: int) -> bool:
        """Whether an order of interval k (an order's id is its hash: a copy's interval is the
        same) or a revealed bid has this id in the book."""
        return (
            book_id in self.revealed or self.base.seal_of(book_id, k) is not None or self.order(book_id, k) is not None
        )

    def clearing_time(self, k: int) -> int | None:
        return self.pending.get(k, self.base.pending.get(k))

    def export(self, meter: str, k: int) -> ExportRecord | None:
        record = self.exports.get((meter, k))
        return record if record is not None else self.base.export(meter, k)

    def last_export(self, meter: str) -> ExportRecord | None:
        ks = self.ks.get(meter)
        return self.exports[meter, ks[-1]] if ks else self.base.last_export(meter)

    def export_ks(self, meter: str, first: int, last: int) -> list[int]:
        return self.base.export_ks(meter, first, last) + [k for k in self.ks.get(meter, []) if first <= k <= last]

    def changes(self) -> MarketChanges:
        return MarketChanges(dict(self.orders), dict(self.pending), dict(self.results), dict(self.exports))

    # -- orders --

    def handlers(self) -> dict[str, Callable[[Opened[Any], bytes], None]]:
        """The handler of each market message type (ledger.draft.Draft.add dispatches)."""
        return {
            "ask": self.ask,
            "bid": self.bid,
            "seal": self.bid,
            "reveal": self.reveal,
            "withdraw": self.withdraw,
            "export": self.export_record,
        }

    def ask(self, opened: Opened[Ask], digest: bytes) -> None:
        ask = opened.body
        self._known_account(ask.seller)
        self._not_duplicate(digest, ask.k)
        entry = self.meter(ask.meter)
        seller = self.draft.current(entry.account) if entry is not None else None  # a rotation in this block
        if entry is None or seller != ask.seller or not entry.source or entry.source != ask.src:
            raise Reject("not-source", f"meter {ask.meter!r} is not the seller's, registered with source {ask.src}")
        self._gate_open(ask.k)
        self._not_too_far(ask.k)
        self._accept(opened, digest)

    def bid(self, opened: Opened[Bid] | Opened[Seal], digest: bytes) -> None:
        """A bid or a seal: the same checks, escrow wh*price or the deposit."""
        body = opened.body
        self._known_account(body.buyer)
        self._not_duplicate(digest, body.k)
        self._gate_open(body.k)
        self._not_too_far(body.k)
        escrow = body.wh * body.price if isinstance(body, Bid) else body.deposit
        free = self.draft.balance(body.buyer)
        if free < escrow:
            raise Reject("insufficient-funds", f"{escrow} to hold in escrow, {free} free")
        self.draft._move(body.buyer, -escrow, +escrow)
        self._accept(opened, digest)

    def reveal(self, opened: Opened[Reveal], digest: bytes) -> None:
        reveal = opened.body
        seal = self.order(reveal.seal)
        if seal is None or not isinstance(seal.body, Seal):
            raise Reject("unknown-order", f"no seal {reveal.seal.hex()}")
        self.draft.check_signer(reveal.buyer, seal.owner, "only the seal's buyer may reveal it")
        if seal.state != OrderState.SEALED:
            raise Reject("not-open", f"the seal is {seal.state}")
        t, gate = self.draft.t, self.terms.gate(seal.k)
        if t < gate:
            raise Reject("too-early", f"a seal is revealed from its gate {gate}, block time {t}")
        if t >= gate + self.terms.reveal_s * 1000:
            raise Reject("gate-closed", f"the reveal window closed at {gate + self.terms.reveal_s * 1000}")
        bid = self._revealed_bid(reveal, seal.body)
        if self.in_book(sha256(reveal.bid).digest()[:16], bid.k):
            raise Reject("duplicate", "the revealed bid is an order of the book already")
        self._put(seal.moved(OrderState.OPEN, self.draft.height, t, digest, bid_raw=reveal.bid, bid=bid))

    def _revealed_bid(self, reveal: Reveal, seal: Seal) -> Bid:
        try:
            bid = self.draft.verifier.verify(reveal.bid, self.draft.t, expect=Bid).body
        except Reject as exc:
            raise Reject("reveal-mismatch", f"the revealed bid fails §4: {exc.reason}") from None
        if bid.buyer != seal.buyer or bid.k != seal.k:
            raise Reject("reveal-mismatch", "the revealed bid's buyer or interval is not the seal's")
        if sha256(reveal.bid + reveal.nonce).digest() != seal.c:
            raise Reject("reveal-mismatch", "SHA-256(bid || nonce) is not the seal's commitment")
        if bid.wh * bid.price > seal.deposit:
            raise Reject("reveal-mismatch", f"the bid costs up to {bid.wh * bid.price}, the deposit is {seal.deposit}")
        return bid

    def withdraw(self, opened: Opened[Withdraw], digest: bytes) -> None:
        withdraw = opened.body
        order = self.order(withdraw.order)
        if order is None:
            raise Reject("unknown-order", f"no order {withdraw.order.hex()}")
        self.draft.check_signer(withdraw.by, order.owner, "only the order's owner may withdraw it")
        if order.state not in Escrowed:
            raise Reject("not-open", f"the order is {order.state}")
        self._gate_open(order.k)
        self.draft._move(order.owner, +order.escrow, -order.escrow)
        self._put(order.moved(OrderState.WITHDRAWN, self.draft.height, self.draft.t, digest))

    def export_record(self, opened: Opened[Export], digest: bytes) -> None:
        export = opened.body
        if self.meter(export.meter) is None:
            raise Reject("unknown-meter", f"meter {export.meter!r} is registered neither in the genesis nor since")
        device = open_message(export.cert, DevCert).body.pk  # verified with the message
        if self.draft.revoked_at(device) is not None:
            raise Reject("cert", f"the device key of {export.meter!r} is revoked")
        end = self.terms.gate(export.k + 1)
        if self.draft.t < end:
            raise Reject("too-early", f"interval {export.k} ends at {end}, block time {self.draft.t}")
        if self.export(export.meter, export.k) is not None:
            raise Reject("duplicate", f"{export.meter!r} proved its export of {export.k} already")
        last = self.last_export(export.meter)
        goes_back = last is not None and (export.k <= last.k or export.total - export.wh < last.total)
        if export.total < export.wh or goes_back:
            raise Reject("counter", "the interval or the cumulative counter goes back")
        record = ExportRecord(export.meter, export.k, export.wh, export.total, 0, self.draft.height)
        self.exports[export.meter, export.k] = record
        self.ks.setdefault(export.meter, []).append(export.k)

    def _known_account(self, pk: bytes) -> None:
        self.draft.check_account(pk, "order's owner")

    def meter(self, meter_id: str) -> MeterEntry | None:
        """A registered meter: the genesis's, or one a `register` of an earlier block added
        (§10): the market's terms grow at each commit, so a meter is usable from the block
        after its `register`, and every rule of one block (asks, exports, the tokens checked
        at commit) reads the same meters. Its account is the key that held it at the base."""
        return self.base.meter(meter_id)

    def _not_duplicate(self, digest: bytes, k: int) -> None:
        if self.in_book(digest[:16], k):
            raise Reject("duplicate", "this order was accepted before")
        if digest in self.draft.refused or digest in self.draft.base.refused:
            raise Reject("duplicate", "this order was rejected before: a rejection is final until its gate")

    def _gate_open(self, k: int) -> None:
        gate = self.terms.gate(k)
        if self.draft.t >= gate:
            raise Reject("gate-closed", f"interval {k}'s gate closed at {gate}, block time {self.draft.t}")

    def _not_too_far(self, k: int) -> None:
        last = self.terms.interval(self.draft.t) + self.terms.ahead
        if k > last:
            raise Reject("too-far", f"orders are taken up to interval {last}, not {k}")

    def _accept(self, opened: Opened, digest: bytes) -> None:
        body = opened.body
        state = OrderState.SEALED if isinstance(body, Seal) else OrderState.OPEN
        self._put(OrderRecord(digest[:16], opened.raw, digest, body, state, self.draft.height, self.draft.t, digest))
        self.by_k.setdefault(body.k, []).append(digest[:16])
        seal_wait = self.terms.reveal_s * 1000 if isinstance(body, Seal) else 0
        when = self.terms.gate(body.k) + seal_wait
        current = self.clearing_time(body.k)
        if current is None or current < when:  # a seal makes the interval wait for its reveal window
            self.pending[body.k] = when

    def _put(self, order: OrderRecord) -> None:
        self.orders[order.id] = order
        if order.bid_raw:
            self.revealed[order.book_hash[:16]] = order.id
        self.draft.outputs.append(self.draft.output(topics.market_order(order.k, order.id), order.status()))

    # -- clearing (§9.3) --

    def clear_due(self) -> None:
        """Clear every interval whose clearing time has come, oldest first."""
        due = {**self.base.pending, **self.pending}
        for k in sorted(k for k, when in due.items() if when <= self.draft.t and k not in self.results):
            self._clear(k)

    def _clear(self, k: int) -> None:
        draft = self.draft
        records = [self.order(i) for i in (*self.base._by_k.get(k, ()), *self.by_k.get(k, ()))]  # pending: in RAM
        bids, asks, clearing = clear_book(r for r in records if r is not None and r.state == OrderState.OPEN)
        paid: dict[bytes, int] = {}
        exp = self.terms.gate(k + 1 + self.terms.grace)
        for fill in clearing.fills:
            bid, ask = bids[fill.bid], asks[fill.ask]
            assert bid.bid is not None
            doc = FillDoc(
                id=free_fill_id(bid.book_hash, ask.hash, lambda i: draft.record(i) is not None),
                k=k,
                bid=bid.book_hash,
                ask=ask.hash,
                payer=bid.owner,
                payee=ask.owner,
                wh=fill.wh,
                amount=fill.amount,
                exp=exp,
                meter=bid.bid.meter,
                t=draft.t,
            )
            draft.hold_fill(doc)
            paid[bid.id] = paid.get(bid.id, 0) + fill.amount
        for r in records:
            if r is None or r.state not in Escrowed:
                continue
            release = r.escrow - paid.get(r.id, 0)
            draft._move(r.owner, +release, -release)
            if r.state == OrderState.SEALED:
                self._put(r.moved(OrderState.VOID, draft.height, draft.t, b""))
                continue
            filled = clearing.filled_wh(r.book_hash[:16])
            wh = r.bid.wh if r.bid is not None else r.body.wh if isinstance(r.body, Ask) else 0
            state = OrderState.FILLED if filled == wh else OrderState.PARTIAL if filled else OrderState.UNFILLED
            self._put(r.moved(state, draft.height, draft.t, b"", filled=filled))
        result = Result(k, *Result.summary(clearing), draft.height, draft.t)
        self.results[k] = result
        draft.outputs.append(draft.output(topics.market_result(k), result.status()))

    # -- delivery (§9.4) --

    def deliver(self, record: CtpRecord) -> None:
        """Use the payee's unused proved export in the trade's window, oldest interval first,
        meters by id, to cover its Wh; `oversold` if it does not."""
        need = record.ctp.wh
        taken: list[ExportRecord] = []
        for meter, k in self._window(record):
            if need == 0:
                break
            export = self.export(meter, k)
            assert export is not None, "a window holds only intervals with a record"
            use = min(export.unused, need)
            if use:
                need -= use
                taken.append(_used(export, use))
        if need:
            raise Reject("oversold", f"{record.ctp.wh - need} of {record.ctp.wh} Wh proved exported in the window")
        for export in taken:
            self.exports[export.meter, export.k] = export

    def _window(self, record: CtpRecord) -> list[tuple[str, int]]:
        if record.fill is not None:
            ask = self.order(record.fill.ask[:16], record.fill.k)
            assert ask is not None and isinstance(ask.body, Ask), "a fill's ask is an order"
            meter, k = ask.body.meter, record.fill.k
            return [(meter, k)] if self.export(meter, k) is not None else []
        first, last = self.terms.interval(record.t), self.terms.interval(self.draft.t)
        # The base's terms list meters under the base's current keys: a rotation of this block
        # moves them at its commit (§10).
        meters = [m.meter for m in self.base.terms.meters_of(self.draft.base.current(record.ctp.payee))]
        window = [(k, m) for m in meters for k in self.export_ks(m, first, last)]
        return [(m, k) for k, m in sorted(window)]


def _used(export: ExportRecord, wh: int) -> ExportRecord:
    return replace(export, used=export.used + wh)
