"""A meter on the bus: sampling, readings, trades, CoEs, peers, the display.

The adapter around the pure parts (sampling.Integrator, trades, keyring, coe, peers): it
owns the clocks, the SQLite store, the MQTT connection and the outputs. One loop thread
samples at config.sample_hz and does everything that writes energy or signs with a
one-time key; paho's thread verifies what arrives and records it; the display draws on
a thread of its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import threading
import time

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from edge import FIRMWARE_VERSION, clock_check, coe, export, keyring, market_screen, policy, trades, tx
from edge.agent_node import AgentNode
from edge.config import MeterConfig
from edge.display import IDLE, View, is_night
from edge.display_screens import Market, Scales
from edge.energy import WMS_PER_WH
from edge.market_node import MarketNode
from edge.outbox import OutboxPump
from edge.peers import PeerTable
from edge.sampling import Integrator, Sense
from edge.state_dir import MeterIdentity
from edge.store import COE, MeterStore, TradeRow
from wire import topics
from wire.messages import Birth, Export, Reading, Rejection, Status, open_message
from wire.reasons import Reject
from wire.verify import Verifier

log = logging.getLogger("spb.meter")
RETRY_EXPORT = ("too-early", "busy")  # refusals of an export record that decided nothing for good
HOUSEKEEPING_MS = 1000  # trades, key ring and subscriptions are looked after once a second
ERROR_BACKOFF_S = 5


def monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class MeterNode:
    def __init__(
        self,
        identity: MeterIdentity,
        config: MeterConfig,
        host: str,
        port: int,
        sense: Sense,
        painter=None,
        led=None,
        reconnect_max_s: float = 30.0,
        tls: TlsFiles | None = None,
    ):
        self.id, self.config, self.sense = identity, config, sense
        self.painter, self.led = painter, led
        self.store = MeterStore(identity.db_path, outbox_max=config.outbox_max)
        self.boot = self.store.next_boot()
        self.clock_floor = clock_check.floor_of(identity.devcert)  # a wall clock before it is surely wrong
        self.integrator = Integrator(self.store.totals(), max_gap_ms=max(2000, int(2000 / config.sample_hz)))
        verifier = Verifier(cas=[identity.ca_pk], validators=identity.validators)
        self.verifier = verifier
        self.peers = PeerTable(Verifier(cas=[identity.ca_pk]))
        self.witness = coe.Witness(
            identity.meter,
            identity.devcert,
            identity.device_key,
            verifier,
            valid_ms=config.coe_days * coe.DAY_MS,
            per_hour=config.coe_per_hour,
        )
        self.power_w = 0
        self._saved_unsigned = 0  # monotonic ms the totals counted before the clock was set were last saved
        self.progress: dict[bytes, int] = {}  # open trade -> W·ms delivered (ahead of the store)
        self.rows: list[TradeRow] = []  # open trades and recent outcomes, from the store
        self._watched: set[str] = set()  # status topics subscribed to
        self._ours: dict[bytes, tuple[bytes, str]] = {}  # hash of our tx message -> (CTP id, kind)
        self._asked: tuple[int | None, int] = (None, 0)  # (batch id, wall ms) of the last CoE request
        self._dirty = threading.Event()  # paho's thread changed the store: reload and pump
        self._remember_peers()
        self.bus = BusClient(
            host,
            port,
            client_id=f"meter-{identity.meter}",
            will=(topics.meter(identity.meter, "state"), topics.OFFLINE, True),
            reconnect_max_delay=reconnect_max_s,
            tls=tls,
        )
        self.pump = OutboxPump(self.store, self.bus)
        self.market = MarketNode(identity, config, self.store, self.bus, verifier, self._dirty)
        self.agent = AgentNode(identity, config, self.store, self.market.account)
        self.interval_ms = config.interval_s * 1000
        self._export_due: int | None = None  # when the accounted interval ends (export.next_end)
        self._exports: dict[bytes, int] = {}  # hash of an export record -> its interval
        self.screen_market = Market(balance=None)  # what the market screens show, made in housekeeping
        self.scales: Scales = Scales(full_w=config.import_full_w)
        self._market_made_of: tuple | None = None  # (interval, orders, sales, balance) screen_market is of
        self.bus.on_connect.append(self._announce)
        # Peers' births and states, not their readings: a meter needs witnesses for its CoEs,
        # and a neighbour's readings would tell it when that household is home (the broker
        # lets it read none: docs/decisions/0012-neighbour-privacy.md; monitors verify them).
        handlers = {
            topics.every_meter("birth"): self._on_birth,
            topics.every_meter("state"): self._on_state,
            topics.REJECTS: self._on_reject,
            topics.meter(identity.meter, "coe/req"): self._on_coe_request,
            topics.meter(identity.meter, "coe/resp"): self._on_coe,
        }
        for topic_filter, handler in handlers.items():
            self.bus.subscribe(topic_filter, handler)

    # ---- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Sample, publish and trade until `stop` is set, then go offline cleanly."""
        totals = self.integrator.totals
        log.info("%s boot %d, %d Wh in, %d Wh out so far", self.id.meter, self.boot, totals.wh_in, totals.wh_out)
        period_ms = 1000 / self.config.sample_hz
        reading_ms = int(self.config.reading_s * 1000)
        start = monotonic_ms()
        # Nothing is signed with a time (the birth on connect, readings, export records,
        # key batches) until the clock is plausible: a signature cannot be taken back. The
        # energy is counted meanwhile, and the first reading after the wait carries it.
        if not clock_check.wait_for_clock(
            wall_ms, self.clock_floor, stop, tick=lambda: self._count_unsigned(start), tick_s=period_ms / 1000
        ):
            self.store.save_totals(self.integrator.totals)  # stopped first: nothing signed, never connected
            self._release()
            return
        self.bus.connect()
        next_sample, next_reading, next_house = float(start), start + reading_ms, start
        version = self.store.data_version()
        self.prove_export(wall_ms())  # a record for the interval the meter stopped in, if it has ended
        while not stop.is_set():
            now = monotonic_ms()
            try:
                reached = self.sample(now - start, now)
                if self._export_due is None or wall_ms() >= self._export_due:
                    self.prove_export(wall_ms())
                if now >= next_reading:
                    self.publish_reading()
                    next_reading += reading_ms
                    if next_reading <= now:  # fell behind: the next one a period from now, no burst
                        next_reading = now + reading_ms
                changed, version = version, self.store.data_version()  # `spb-meter ctp|erc` wrote
                if reached or now >= next_house or self._dirty.is_set() or changed != version:
                    self.housekeeping(wall_ms())  # before kick: what they queued is watched first
                    next_house = now + HOUSEKEEPING_MS
                self.pump.kick()
                self._show(wall_ms())
            except Exception:  # an SPI glitch, a locked or full disk: log, back off, go on
                log.exception("%s: the meter loop failed; retrying in %d s", self.id.meter, ERROR_BACKOFF_S)
                if stop.wait(ERROR_BACKOFF_S):
                    break
            next_sample += period_ms
            if next_sample < now:  # fell behind (a slow SD card, a suspended VM): skip, don't catch up
                next_sample = now + period_ms
            stop.wait(max(0.0, next_sample - monotonic_ms()) / 1000)
        self.shutdown()

    def sample(self, elapsed_ms: int, now_mono: int) -> bool:
        """Integrate one sample; True if a held trade just received all its energy."""
        w_in, w_out = self.sense(elapsed_ms)
        self.power_w = w_in - w_out
        before = self.integrator.totals
        self.integrator.sample(w_in, w_out, now_mono)
        imported = self.integrator.totals.wms_in - before.wms_in
        self.market.on_exported(self.integrator.totals.wms_out - before.wms_out)
        return bool(imported and trades.allocate(self.rows, self.progress, imported, wall_ms()))

    def _count_unsigned(self, start: int) -> None:
        """Integrate one sample while the clock is not yet plausible: the energy only, not the
        trades' progress or the interval's export (both are judged by wall time)."""
        now = monotonic_ms()
        w_in, w_out = self.sense(now - start)
        self.power_w = w_in - w_out
        self.integrator.sample(w_in, w_out, now)
        if now - self._saved_unsigned >= HOUSEKEEPING_MS:  # a kill -9 loses a second of it at most
            self.store.save_totals(self.integrator.totals)
            self._saved_unsigned = now

    def publish_reading(self) -> int:
        """Commit the totals, trade progress and a signed reading (into the outbox) at once."""
        totals = self.integrator.totals

        def sign(seq: int) -> tuple[str, bytes]:
            reading = Reading(
                meter=self.id.meter, seq=seq, t=wall_ms(), wh_in=totals.wh_in, wh_out=totals.wh_out, w=self.power_w
            )
            return topics.meter(self.id.meter, "reading"), reading.sign(self.id.device_key)

        seq = self.store.commit_reading(totals, sign, self.progress)
        self.market.save_progress()
        return seq

    def prove_export(self, now: int) -> export.Due | None:
        """At an interval's end, commit the totals and the export record for it (§9.4) at once."""

        def sign(due: export.Due) -> bytes:
            record = Export(meter=self.id.meter, cert=self.id.devcert, k=due.k, wh=due.wh, total=due.total, t=now)
            return record.sign(self.id.device_key)

        # A record still refused as too early goes again first: the ledger takes a meter's
        # records in interval order only (`counter`), so once the next one is in, the earlier
        # one, and the trades sold against its Wh, would be lost (seen in a chaos run after a
        # clock jump forward: the record was signed early, retried only after the next).
        self._resend_exports(now, at_once=True)
        totals = self.integrator.totals
        advance = lambda state: export.step(state, totals.wh_out, now, self.interval_ms)  # noqa: E731
        due = self.store.commit_export(totals, self.progress, advance, sign, now)
        self._export_due = export.next_end(self.store.export_state(), self.interval_ms)
        if due is not None:
            log.info("%s proves %d Wh exported in interval %d (total %d Wh)", self.id.meter, due.wh, due.k, due.total)
        return due

    def housekeeping(self, now: int) -> None:
        """Trades: ERCs, cancels, resends, status subscriptions. Key ring: the next batch and its CoE."""
        self._dirty.clear()
        self.agent.tick(now, self.integrator.totals)  # first: the market looks after what it places
        self.market.housekeeping(now)  # first: a fill it turns into a trade is one of the rows below
        self.rows = self.store.trades(changed_since=now - trades.RESULT_MS)
        self.progress = {r.id: self.progress.get(r.id, r.delivered_wms) for r in self.rows if r.state in trades.OPEN}
        acted = [self._step(row, now) for row in self.rows if row.state in trades.OPEN]  # every one, no short cut
        if any(acted):
            self.rows = self.store.trades(changed_since=now - trades.RESULT_MS)  # with what the steps signed
        self._watch()
        self._resend_exports(now)
        self._keep_keys(now)
        self._make_screen_market(now)
        if self.led is not None:
            self.led.set(any(r.state in trades.OPEN for r in self.rows) or self.screen_market.open)

    def _step(self, row: TradeRow, now: int) -> bool:
        """Take the trade's next step, if it has one; whether it did."""
        delivered = self.progress[row.id]
        step = trades.next_step(row, delivered, now, int(self.config.resend_s * 1000), self.interval_ms)
        if step is None:
            return False
        if step not in (trades.ERC, trades.CANCEL) and (
            not self.bus.connected.is_set() or self.store.queued(row.message(step))
        ):
            return False  # the last copy has not even left: more would only pile up in the outbox
        try:
            if step == trades.ERC:
                self.publish_reading()  # the totals the ERC's energy is part of are durable first
                tx.confirm(self.store, row.id, delivered // WMS_PER_WH, now, delivered)
                log.info("%s confirms %d Wh for CTP %s: ERC", self.id.meter, delivered // WMS_PER_WH, row.id.hex())
            elif step == trades.CANCEL:
                tx.cancel(self.store, self.id.account_key(), row.id, now)
                log.info("%s cancels CTP %s: expired unconfirmed", self.id.meter, row.id.hex())
            else:
                tx.resend(self.store, row.id, step, now)
                log.info("%s sends %s of CTP %s again", self.id.meter, step.rsplit("/", 1)[-1], row.id.hex())
        except (tx.TradeError, OSError) as exc:  # e.g. `spb-meter erc` confirmed it meanwhile
            log.warning("%s: CTP %s: %s", self.id.meter, row.id.hex(), exc)
        return True

    def _watch(self) -> None:
        """Subscribe to the status of every open trade, and drop finished ones."""
        rows = self.rows
        wanted = {topics.status(r.id) for r in rows if r.state in trades.OPEN}
        for topic in wanted - self._watched:
            self.bus.subscribe(topic, self._on_status)
        for topic in self._watched - wanted:
            self.bus.unsubscribe(topic)
        self._watched = wanted
        self._ours = {
            hashlib.sha256(raw).digest(): (r.id, kind)
            for r in rows
            if r.state in trades.OPEN
            for kind, raw in (("ctp", r.ctp), ("erc", r.erc), ("cancel", r.cancel))
            if raw
        }

    def _resend_exports(self, now: int, at_once: bool = False) -> None:
        """Export records the ledger refused as too early (our clock ahead of its blocks') or
        had no room for go again after resend_s, or `at_once`; the others are watched for
        rejects."""
        records = self.store.exports(limit=2 + self.config.grace)
        self._exports = {hashlib.sha256(raw).digest(): k for k, raw, *_ in records}
        wait_ms = 0 if at_once else self.config.resend_s * 1000
        for k, raw, _wh, _total, sent, reason in records:
            if reason in RETRY_EXPORT and now - sent >= wait_ms and not self.store.queued(raw):
                self.store.export_answered(k, "", now, resend=True)
                log.info("%s sends its export record of interval %d again (%s)", self.id.meter, k, reason)

    def _keep_keys(self, now: int) -> None:
        newest = self.store.newest_batch()
        if keyring.wants_new_batch(newest, now):
            newest = self.store.add_batch(keyring.Batch.new(os.urandom(32 * self.config.batch_size), now))
            log.info("%s made key batch #%d (%d one-time keys)", self.id.meter, newest.id, newest.size)
        assert newest is not None, "wants_new_batch wants one when there is none"
        waiting = newest if newest.coe is None else None
        asked_id, asked_at = self._asked
        if waiting is None or (asked_id == waiting.id and now - asked_at < self.config.resend_s * 1000):
            return
        online = self.peers.online()
        if not online or not self.bus.connected.is_set():  # a request queued offline would be stale
            return
        witness = random.choice(online)  # §4: a randomly chosen online meter
        raw = coe.request(waiting, self.id.devcert, self.id.device_key, os.urandom(16), now)
        self.store.enqueue(topics.meter(witness, "coe/req"), raw, COE)
        self._asked = (waiting.id, now)
        log.info("%s asks %s for a CoE of batch #%d", self.id.meter, witness, waiting.id)

    def _make_screen_market(self, now: int) -> None:
        """The market screens' record (edge.market_screen), made again only when what it is made
        of changed: the interval, the market's rows as its housekeeping just read them, the
        balance. So the day's orders are read from SQLite a few times an interval, not every
        second, and never on the 10 Hz frame path (_show hands over what is made here). The
        scales follow the policy, read again at each new interval as the agent reads it."""
        k = now // self.interval_ms
        made_of = (k, self.market.orders, self.market.sales, self.market.balance())
        if made_of == self._market_made_of:
            return
        if self._market_made_of is None or self._market_made_of[0] != k:
            self.scales = market_screen.scales(self.config.import_full_w, self.config.interval_s, self._policy())
        self._market_made_of = made_of
        orders = self.store.orders_from(market_screen.first_interval(now, self.interval_ms))
        self.screen_market = market_screen.market_record(
            orders, self.market.sales, now, self.interval_ms, made_of[3], self.config.source
        )

    def _policy(self) -> policy.Policy:
        """The household's policy for the scales; a bad one (the agent logs it) keeps the defaults."""
        try:
            return policy.load(self.agent.policy_path)
        except (ValueError, OSError):
            return policy.Policy()

    def _show(self, now: int) -> None:
        if self.painter is None:
            return
        hour = time.localtime(now // 1000).tm_hour
        night = is_night(hour, self.config.night_start, self.config.night_end)
        self.painter.show(self.view(now), night, self.screen_market, self.scales)

    def view(self, now: int) -> View:
        """A trade's outcome or progress first, then a sale to deliver, else idle."""
        online = self.bus.connected.is_set()
        shown = trades.view(self.rows, self.progress, now, online, self.power_w)
        if shown.phase == IDLE:
            return self.market.view(online, self.power_w) or shown
        return shown

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Say `offline` ourselves: a clean DISCONNECT means the broker drops our will.

        The will says the same `offline`, so the rare close that still fires it (see
        BusClient.close) only repeats the retained state. What the broker has not
        acknowledged stays in the outbox for the next start.
        """
        self.publish_reading()  # the energy since the last reading is not lost by a clean stop
        if self.integrator.unsampled_ms:
            log.warning(
                "%s: %d s of stalls in sampling were not integrated",
                self.id.meter,
                self.integrator.unsampled_ms // 1000,
            )
        self.pump.kick()
        info = self.bus.publish(topics.meter(self.id.meter, "state"), topics.OFFLINE, retain=True)
        if not self.bus.wait_acked(info, timeout_s):
            log.warning("%s: broker did not acknowledge offline within %.0f s", self.id.meter, timeout_s)
        self.pump.forget_acked()  # PUBACKs come in order (MQTT 3.1.1 §4.6): all before `offline` are in
        self.bus.close()
        self._release()

    def _release(self) -> None:
        """Close the display, the LED and the store: the last thing a stopping meter does."""
        for device in (self.painter, self.led):
            if device is not None:
                device.close()
        self.store.close()

    # ---- paho's thread -------------------------------------------------------------------

    def _announce(self) -> None:
        birth = Birth(meter=self.id.meter, cert=self.id.devcert, fw=FIRMWARE_VERSION, boot=self.boot, t=wall_ms())
        self.bus.publish(topics.meter(self.id.meter, "state"), topics.ONLINE, retain=True)
        self.bus.publish(topics.meter(self.id.meter, "birth"), birth.sign(self.id.device_key), retain=True)
        log.info("%s online, birth sent", self.id.meter)

    def _on_status(self, topic: str, payload: bytes, retained: bool) -> None:
        now = wall_ms()
        try:
            status = self.verifier.verify(payload, now, expect=Status).body
        except Reject as exc:
            log.warning("%s rejected a status on %s: %s", self.id.meter, topic, exc)
            return
        if topic != topics.status(status.ctp):
            log.warning("%s: a status of CTP %s on %s", self.id.meter, status.ctp.hex(), topic)
            return
        row = self.store.update_trade(
            status.ctp, lambda r: trades.on_status(r, status, hashlib.sha256(r.ctp).digest(), now)
        )
        if row is not None:
            log.info("%s: CTP %s %s%s", self.id.meter, row.id.hex(), row.state, f" ({row.reason})" * bool(row.reason))
            self._dirty.set()

    def _on_reject(self, topic: str, payload: bytes, retained: bool) -> None:
        ours, market_ours, exports = self._ours, self.market.ours, self._exports
        try:
            msg = open_message(payload, Rejection).body.msg
            if msg not in ours and msg not in market_ours and msg not in exports:
                return  # someone else's: not worth a signature check
            rejection = self.verifier.verify(payload, wall_ms(), expect=Rejection).body
        except Reject as exc:
            log.warning("%s rejected a reject: %s", self.id.meter, exc)
            return
        now = wall_ms()
        if msg in exports:
            if rejection.reason != "duplicate":
                self.store.export_answered(exports[msg], rejection.reason, now, resend=False)
                log.info("%s: the ledger rejected export record %d: %s", self.id.meter, exports[msg], rejection.reason)
            return
        if msg in market_ours:
            self.market.on_reject(*market_ours[msg], rejection.reason, now)
            return
        ctp_id, kind = ours[msg]
        account = self.market.account_pk
        row = self.store.update_trade(ctp_id, lambda r: trades.on_reject(r, kind, rejection.reason, now, account))
        log.info("%s: the ledger rejected the %s of CTP %s: %s", self.id.meter, kind, ctp_id.hex(), rejection.reason)
        if row is not None:
            self._dirty.set()

    def _on_coe_request(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return _left_retained(topic)
        now = wall_ms()
        try:
            requester, raw = self.witness.answer(payload, self.store.roots(), now)
        except (Reject, coe.Refused) as exc:
            log.warning("%s refused a CoE request: %s", self.id.meter, exc)
            return
        self.store.enqueue(topics.meter(requester, "coe/resp"), raw, COE)
        self._dirty.set()
        log.info("%s witnessed a key batch of %s", self.id.meter, requester)

    def _on_coe(self, topic: str, payload: bytes, retained: bool) -> None:
        if retained:
            return _left_retained(topic)
        now = wall_ms()
        waiting = self.store.newest_batch()
        if waiting is None or waiting.coe is not None:
            return  # an answer to a request another witness answered first
        assert waiting.id is not None, "a batch from the store has its row id"
        try:
            got = coe.accept(self.verifier, payload, waiting, self.id.meter, now)
        except (Reject, coe.Refused) as exc:
            log.warning("%s refused a CoE: %s", self.id.meter, exc)
            return
        if self.store.set_coe(waiting.id, payload, got.t, got.exp):
            self._dirty.set()
            log.info("%s got the CoE of key batch #%d", self.id.meter, waiting.id)

    def _remember_peers(self) -> None:
        """Re-verify the births stored before this boot; a peer whose devcert lapsed is dropped."""
        for meter, raw in self.store.peer_births():
            try:
                self.peers.on_birth(meter, raw, wall_ms())
            except Reject as exc:
                log.warning("%s forgets %s: stored birth no longer verifies (%s)", self.id.meter, meter, exc)

    def _peer_message(self, topic: str, payload: bytes, handle) -> None:
        parsed = topics.parse_meter_topic(topic)
        if parsed is None or parsed[0] == self.id.meter:
            return
        try:
            handle(parsed[0], payload)
        except Reject as exc:
            if exc.reason == "replay":  # normally a peer's outbox resending after a crash: harmless
                log.info("%s ignored an old message on %s: %s", self.id.meter, topic, exc)
            else:
                log.warning("%s rejected %s: %s", self.id.meter, topic, exc)

    def _on_birth(self, topic: str, payload: bytes, retained: bool) -> None:
        def handle(peer: str, raw: bytes) -> None:
            birth = self.peers.on_birth(peer, raw, wall_ms())
            self.store.save_peer_birth(peer, raw)
            log.info("%s verified birth of %s (fw %s, boot %d)", self.id.meter, peer, birth.fw, birth.boot)

        self._peer_message(topic, payload, handle)

    def _on_state(self, topic: str, payload: bytes, retained: bool) -> None:
        self._peer_message(topic, payload, self.peers.on_state)


def _left_retained(topic: str) -> None:
    """A retained copy of a CoE request or answer: §7 sends neither retained, so it is what a
    client left on the broker, delivered again at every subscribe; answering or refusing it
    each time would only mislead (the live one, if it was live, came as such)."""
    log.debug("ignored a retained message on %s", topic)
