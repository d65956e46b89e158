"""The market on the meter's bus: its orders' statuses, sealed-bid reveals, the held trades
that name its account (fills of its bids to confirm, sales to deliver), and its account's
money (the ledger's account status, decision 0010: `balance()`).

The adapter around edge.market for edge.meter.MeterNode, which owns the loop, the store and
the bus: housekeeping() runs on the loop thread (it signs), the on_* handlers on paho's
(they verify and record, then set `dirty` so the loop looks again).

Which statuses: a fill of our bid or a sale from our ask or to a direct CTP gets an id we
cannot know in advance, so a meter with an account subscribes to spb/v1/status/+ and drops,
before any decoding, every status whose bytes do not contain our 32-byte account key (a held
status names payer and payee) unless it is about a sale we are following. A substring test
costs well under a microsecond per status; the retained statuses of every trade ever made
still come at each (re)connect (see the report of issue 14 for the measured cost), which a
per-account topic on the ledger's side would avoid.

After a key rotation (docs/PROTOCOL.md §10.3, `spb-meter rotate-key`) the meter starts again
with the new key: its account status is the new key's (the old key's says 0/0 for good), and
trades and orders of before, which name the old key, are still ours (`account_pks`).
"""

from __future__ import annotations

import hashlib
import logging
import threading

from broker.client import BusClient
from broker.clock import wall_ms
from edge import market, orders, rotation
from edge.account import accept
from edge.config import MeterConfig
from edge.display import View
from edge.keyring import NoKey
from edge.state_dir import MeterIdentity
from edge.store import AccountRow, MeterStore, OrderRow, SaleRow
from edge.tx import TradeError
from wire import topics
from wire.messages import CtpState, Order, Status
from wire.reasons import Reject
from wire.verify import Verifier

log = logging.getLogger("spb.meter")
RECENT_MS = 3_600_000  # orders and sales changed within this long are kept in memory


class MarketNode:
    def __init__(
        self,
        identity: MeterIdentity,
        config: MeterConfig,
        store: MeterStore,
        bus: BusClient,
        verifier: Verifier,
        dirty: threading.Event,
    ):
        self.id, self.config, self.store, self.bus, self.verifier = identity, config, store, bus, verifier
        self.dirty = dirty
        self.interval_ms, self.reveal_ms = config.interval_s * 1000, config.reveal_s * 1000
        self.account = None if not (identity.root / "account.key").exists() else identity.account_key()
        self.account_pk = b"" if self.account is None else bytes(self.account.verify_key)
        self.account_pks: tuple[bytes, ...] = ()  # the current key and every one it replaced (_remember_keys)
        self.orders: list[OrderRow] = []
        self.sales: list[SaleRow] = []
        self.sale_progress: dict[bytes, int] = {}  # held sale -> W·ms exported for it (ahead of the store)
        self._sale_topics: frozenset[str] = frozenset()  # statuses of held sales we follow
        self._recorded: set[str] = set()  # ... of sales paho's thread recorded since housekeeping read them
        self._watched: set[str] = set()  # order status topics subscribed to
        self.ours: dict[bytes, tuple[str, bytes]] = {}  # hash of our market message -> (kind, order id)
        self._money: AccountRow | None = store.account()  # the newest account status, stored: known offline too
        if self.account is not None:
            self._remember_keys()
            # Before the first connect: an end status queued for us while we were down must pass the filter.
            held = store.sales(changed_since=self._now())  # the held ones
            self._sale_topics = frozenset(topics.status(s.id) for s in held if s.state == CtpState.HELD)
            bus.subscribe(topics.STATUS_ALL, self._on_any_status)
            bus.subscribe(topics.account(self.account_pk), self._on_account)

    def _remember_keys(self) -> None:
        """Our account's keys: the current one, recorded at every start, and those it replaced,
        which `spb-meter rotate-key` recorded (or an earlier start, if the operator rotated a
        lost key). Fills, sales and orders made before a rotation name the old key; the ledger
        pays them from or to the new one (docs/PROTOCOL.md §10.3), so they stay ours."""
        self.store.remember_account_key(self.account_pk, self._now())
        if rotation.pending(self.id.root):
            log.warning(
                "%s: a key rotation has no outcome yet: if the ledger applied it, this key's messages "
                "are refused `rotated`; stop the meter and run `spb-meter rotate-key` again",
                self.id.meter,
            )
        self.account_pks = (self.account_pk, *(pk for pk in self.store.account_keys() if pk != self.account_pk))
        if len(self.account_pks) > 1:
            old = ", ".join(pk.hex()[:16] for pk in self.account_pks[1:])
            log.info("%s: account key %s, replacing %s", self.id.meter, self.account_pk.hex()[:16], old)

    def balance(self) -> int | None:
        """The household's free units as the ledger's newest account status says (§9.6);
        None before any status reached this meter (or it has no account)."""
        money = self._money
        return None if money is None else money.balance

    # ---- the loop thread -----------------------------------------------------------------

    def housekeeping(self, now: int) -> None:
        """Reveals and resends of our orders, fills to confirm, and subscriptions."""
        if self.account is None:
            return
        self.orders = self.store.orders(changed_since=now - RECENT_MS - self.interval_ms * (2 + self.config.grace))
        for row in self.orders:
            self._step(row, now)
        self.sales = self.store.sales(changed_since=now - RECENT_MS)
        for sale in self.sales:
            if sale.state == CtpState.HELD and sale.order_id is None:
                self._match(sale, now)
        self.sales = self.store.sales(changed_since=now - RECENT_MS)
        self.sale_progress = {
            s.id: self.sale_progress.get(s.id, s.delivered_wms) for s in self.sales if s.state == CtpState.HELD
        }
        self._sale_topics = frozenset(topics.status(s.id) for s in self.sales if s.state == CtpState.HELD)
        self._recorded -= {topics.status(s.id) for s in self.sales}  # in _sale_topics now, or ended
        self._watch(now)

    def _step(self, row: OrderRow, now: int) -> None:
        step = market.next_step(row, now, int(self.config.resend_s * 1000), self.interval_ms, self.reveal_ms)
        if step is None or (step not in (market.REVEAL, market.WITHDRAW) and not self.bus.connected.is_set()):
            return
        assert self.account is not None, "orders are only looked after with an account"
        if step == market.REVEAL:
            orders.reveal(self.store, self.account, row.id, now)
            log.info("%s reveals its sealed bid %s for interval %d", self.id.meter, row.id.hex(), row.k)
        elif step == market.WITHDRAW:
            try:
                orders.withdraw(self.store, self.account, row.id, self.interval_ms, now)
            except TradeError as exc:  # its status moved on meanwhile
                log.warning("%s cannot withdraw order %s again: %s", self.id.meter, row.id.hex(), exc)
                return
            log.info("%s withdraws order %s again, with its new account key", self.id.meter, row.id.hex())
        elif not self.store.queued(market.message(row, step)):
            orders.resend(self.store, row.id, step, now)
            log.info("%s sends %s of order %s again", self.id.meter, step.rsplit("/", 1)[-1], row.id.hex())

    def _match(self, sale: SaleRow, now: int) -> None:
        """Tie a new sale or fill to our order; a fill becomes our trade to confirm."""
        found = market.match(sale, self.orders, self.sales)
        if found is None:
            return
        order, wh = found
        if sale.role == market.SOLD:
            self.store.update_sale(sale.id, lambda s: s._replace(order_id=order.id, wh=wh, changed=now))
            log.info("%s sold %d Wh from ask %s: trade %s", self.id.meter, wh, order.id.hex(), sale.id.hex())
            return
        exp = market.fill_exp(order.k, self.interval_ms, self.config.grace)
        try:
            self.store.add_fill(sale.id, order, wh, exp, now)
        except NoKey as exc:
            log.warning("%s cannot confirm fill %s: %s", self.id.meter, sale.id.hex(), exc)
            return
        log.info("%s bought %d Wh by bid %s: trade %s to confirm", self.id.meter, wh, order.id.hex(), sale.id.hex())
        self.dirty.set()

    def _watch(self, now: int) -> None:
        """Subscribe to the statuses of our orders that still matter; drop the others."""
        live = [r for r in self.orders if market.watched(r, now, self.interval_ms, self.config.grace)]
        wanted = {topic for r in live for topic in market.order_topics(r)}
        for topic in wanted - self._watched:
            self.bus.subscribe(topic, self._on_order)
        for topic in self._watched - wanted:
            self.bus.unsubscribe(topic)
        self._watched = wanted
        self.ours = {
            hashlib.sha256(raw).digest(): (kind, r.id)
            for r in live
            for kind, raw in (("order", r.msg), (market.REVEAL, r.reveal), ("withdraw", r.withdraw))
            if raw
        }

    def on_exported(self, wms: int) -> None:
        market.allocate_export(self.sales, self.sale_progress, wms)

    def save_progress(self) -> None:
        if self.sale_progress:
            self.store.save_sale_progress(self.sale_progress)

    def view(self, online: bool, power_w: int) -> View | None:
        return market.sale_view(self.sales, self.sale_progress, online, power_w)

    # ---- paho's thread -------------------------------------------------------------------

    def on_reject(self, kind: str, order_id: bytes, reason: str, now: int) -> None:
        row = self.store.update_order(order_id, lambda r: market.on_reject(r, kind, reason, now, self.account_pk))
        log.info("%s: the ledger rejected the %s of order %s: %s", self.id.meter, kind, order_id.hex(), reason)
        if row is not None:
            self.dirty.set()

    def _on_order(self, topic: str, payload: bytes, retained: bool) -> None:
        now = self._now()
        try:
            order = self.verifier.verify(payload, now, expect=Order).body
        except Reject as exc:
            log.warning("%s rejected an order status on %s: %s", self.id.meter, topic, exc)
            return
        if topic != topics.market_order(order.k, order.id):
            log.warning("%s: a status of order %s on %s", self.id.meter, order.id.hex(), topic)
            return
        for row in self.orders:
            if order.id in (row.id, row.bid_id):
                new = self.store.update_order(row.id, lambda r: market.on_order(r, order, now))
                if new is not None:
                    log.info("%s: order %s %s, %d Wh filled", self.id.meter, row.id.hex(), new.state, new.filled)
                    self.dirty.set()

    def _on_any_status(self, topic: str, payload: bytes, retained: bool) -> None:
        """Every trade's status: only those naming our account (any of its keys), or about a
        sale we follow."""
        if (
            not any(pk in payload for pk in self.account_pks)
            and topic not in self._sale_topics
            and topic not in self._recorded
        ):
            return  # the cheap filter: most statuses are other households' trades
        now = self._now()
        try:
            status = self.verifier.verify(payload, now, expect=Status).body
        except Reject as exc:
            log.warning("%s rejected a status on %s: %s", self.id.meter, topic, exc)
            return
        if self.store.update_sale(status.ctp, lambda s: market.on_sale_status(s, status, now)) is not None:
            self.dirty.set()  # a sale we follow ended
            return
        sale = market.sale_of(status, topic, self.account_pks, now)
        if sale is not None and self.store.trade(sale.id) is None and self.store.add_sale(sale):  # not our own CTP
            if sale.state == CtpState.HELD:
                self._recorded.add(topic)  # its end may come before housekeeping follows it (after an outage)
            log.info("%s: trade %s %s naming us (%s)", self.id.meter, sale.id.hex(), sale.state, sale.role)
            self.dirty.set()

    def _on_account(self, topic: str, payload: bytes, retained: bool) -> None:
        """Our account's status: kept if newer than the one we have (by height, then time)."""
        try:
            money = accept(self.verifier, topic, payload, self._now(), self.account_pk)
        except Reject as exc:
            log.warning("%s rejected an account status on %s: %s", self.id.meter, topic, exc)
            return
        if self.store.save_account(money):
            self._money = money
            log.info("%s: balance %d units free, %d held (block %d)", self.id.meter, money.balance, money.held, money.h)

    def _now(self) -> int:
        return wall_ms()
