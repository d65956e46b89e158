"""The community as a monitoring subscriber sees it: every message verified, then kept.

Sans-IO: `CommunityView.apply(topic, payload, now)` takes one message off the bus and
returns what it was: `Verified` (its JSON record, docs/MONITORING.md) or `Unverified` (the
reason, never its data), or None for traffic that is not the monitor's (CoE requests between
meters). The view keeps the latest of everything, bounded, for the terminal view, the
Prometheus exporter, the mirror's summaries and the dashboard, which all read `snapshot()`.

Trust is the genesis: the community CA's devcerts for meters (a reading verifies against its
meter's retained birth), the validators' keys for statuses, orders, results, accounts,
blocks (a quorum of seals) and consensus messages, the payer's or buyer's key for a
transaction. A retained status, order or account only moves forward: an older copy the
broker delivers late changes nothing.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from edge.peers import PeerTable
from ledger import consensus
from ledger.block import Block, BlockError, quorum
from ledger.genesis import Genesis
from ledger.statuses import is_status
from monitor.records import PRODUCTS, record
from wire import topics
from wire.messages import Body, CtpState, DevCert, OrderState, Register, Retire, Rotate, open_message
from wire.reasons import Reject
from wire.verify import Verifier

RECENT_TRADES = 200  # finished trades kept for the views; open ones are all kept
RECENT_BLOCKS = 50
RECENT_INTERVALS = 48  # clearing results kept: a day of half hours, or what a chart shows
RECENT_REJECTS = 50
FINAL_TRADE = frozenset({CtpState.SETTLED, CtpState.REFUNDED, CtpState.REJECTED})
OPEN_ORDER = frozenset({OrderState.SEALED, OrderState.OPEN})
# Topics whose messages the broker retains (docs/PROTOCOL.md §7, §9.5, §9.6): the mirror
# retains their JSON too, so a tool that subscribes later gets the current value at once.
RETAINED_LEAVES = ("state", "birth")


@dataclass(frozen=True, slots=True)
class Verified:
    topic: str
    kind: str  # the body's typ, or `state`, `ledger-state`, `block`
    record: dict[str, Any]
    retained: bool  # whether the source topic is a retained one (it names a current value)


@dataclass(frozen=True, slots=True)
class Unverified:
    topic: str
    reason: str  # a docs/PROTOCOL.md §4 reason code
    detail: str


Seen = Verified | Unverified | None


def retained_topic(topic: str) -> bool:
    """Whether the protocol publishes `topic` retained: a current value, not an event."""
    parsed = topics.parse_meter_topic(topic)
    if parsed is not None:
        return parsed[1] in RETAINED_LEAVES
    return is_status(topic) or topic.startswith(topics.LEDGER_STATE_ALL[:-1])


@dataclass
class ValidatorSeen:
    said: bool = False  # its retained state arrived: online or offline, we know
    online: bool = False
    height: int = 0
    round: int = 0  # the highest round heard at its height: 0 is the normal case
    round_changes: int = 0  # round-change messages it sent
    at_height: int = 0  # the height `round` is about


@dataclass
class CommunityView:
    genesis: Genesis
    peers: PeerTable = field(init=False)
    verifier: Verifier = field(init=False)
    meters: dict[str, dict[str, Any]] = field(default_factory=dict)  # meter id -> what we know of it
    trades: dict[str, dict[str, Any]] = field(default_factory=dict)  # CTP id hex -> its last status record
    parties: dict[str, tuple[str, str, int]] = field(default_factory=dict)  # CTP id hex -> (payer, payee, wh) hex
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)  # order id hex -> its last status record
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # interval -> its `cleared` record
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)  # account key hex -> its status record
    validators: dict[int, ValidatorSeen] = field(default_factory=dict)
    blocks: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_BLOCKS))
    rejects: Counter[str] = field(default_factory=Counter)  # the ledger's rejects, by reason
    recent_rejects: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REJECTS))
    unverified: Counter[str] = field(default_factory=Counter)  # messages we refused, by reason
    recent_unverified: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECENT_REJECTS))
    transactions: Counter[str] = field(default_factory=Counter)  # verified transactions, by typ
    # Monotonic totals for Prometheus counters: each trade counted once per state it reached,
    # each interval's result once.
    trade_states: Counter[str] = field(default_factory=Counter)
    cleared_wh: Counter[str] = field(default_factory=Counter)  # by product: green, open
    fills: int = 0
    block_gaps_ms: list[int] = field(default_factory=lambda: [0, 0])  # [sum, count] between consecutive blocks
    _finished: deque[str] = field(default_factory=deque)  # final trades, oldest first: forgotten past RECENT_TRADES
    meter_of: dict[str, str] = field(init=False)  # account key hex -> its meter (a market genesis names them)
    replaced: set[str] = field(default_factory=set)  # account keys hex a rotation replaced: their money moved
    retired: set[str] = field(default_factory=set)  # meters of households the operator retired

    def __post_init__(self) -> None:
        self.verifier = self.genesis.verifier()
        self.peers = PeerTable(Verifier(cas=self.genesis.cas))
        self.validators = {i: ValidatorSeen() for i in range(len(self.genesis.validators))}
        self.meter_of = {m.account.hex(): m.meter for m in self.genesis.market.meters} if self.genesis.market else {}

    # -- one message --

    def apply(self, topic: str, payload: bytes, now: int) -> Seen:
        try:
            return self._apply(topic, payload, now)
        except Reject as exc:
            self.unverified[exc.reason] += 1
            self.recent_unverified.append({"topic": topic, "reason": exc.reason, "detail": exc.detail, "t_ms": now})
            return Unverified(topic, exc.reason, exc.detail)

    def _apply(self, topic: str, payload: bytes, now: int) -> Seen:
        if topic.startswith(topics.CONSENSUS):
            self._consensus(payload)
            return None
        if topic.startswith(topics.LEDGER_STATE_ALL[:-1]):
            return self._ledger_state(topic, payload)
        if topic == topics.LEDGER_BLOCKS:
            return self._block(topic, payload)
        parsed = topics.parse_meter_topic(topic)
        if parsed is not None:
            return self._meter(topic, *parsed, payload, now)
        typ = topics.expected_type(topic)
        if typ is None:
            return None  # not a topic of the protocol: nothing to say about it
        body = self.verifier.verify(payload, now, expect=typ).body
        self._learn_account(body)
        seen = Verified(topic, typ, record(body), retained_topic(topic))
        return self._keep(seen)

    def _learn_account(self, body: Body) -> None:
        """Name households the operator added after the genesis, and keys households
        replaced (docs/PROTOCOL.md §10), by their meters: a `register` maps its account to its
        first meter no account has yet, a `rotate` gives the new key the old key's meter, a
        `retire` marks its meter gone (the mirror removes its Home Assistant device).
        Only operators (and, for a rotation, the old key) sign these, but the ledger may still
        reject one (a revoked meter, a key in use): a meter's name is only a label here, and a
        monitor started later knows only what it saw (blocks on the bus carry no inputs)."""
        if isinstance(body, Register) and body.account.hex() not in self.meter_of:
            taken = set(self.meter_of.values())
            meters = [open_message(cert, DevCert).body.meter for cert, _ in body.meters]
            fresh = [m for m in meters if m not in taken]
            if fresh:
                self.meter_of[body.account.hex()] = fresh[0]
        elif isinstance(body, Retire) and body.account.hex() in self.meter_of:
            self.retired.add(self.meter_of[body.account.hex()])
        elif isinstance(body, Rotate) and body.account.hex() in self.meter_of:
            self.meter_of.setdefault(body.new.hex(), self.meter_of[body.account.hex()])
            self.replaced.add(body.account.hex())

    def _meter(self, topic: str, meter: str, leaf: str, payload: bytes, now: int) -> Seen:
        if leaf == "state":
            self.peers.on_state(meter, payload)
            online = payload == topics.ONLINE
            self.meters.setdefault(meter, {"meter": meter})["online"] = online
            return Verified(topic, "state", {"meter": meter, "state": payload.decode(errors="replace")}, True)
        if leaf == "birth":
            birth = self.peers.on_birth(meter, payload, now)
            seen = Verified(topic, "birth", record(birth), True)
            self.meters.setdefault(meter, {"meter": meter}).update(fw=birth.fw, boot=birth.boot)
            return seen
        if leaf == "reading":
            reading = self.peers.on_reading(meter, payload, now)
            seen = Verified(topic, "reading", record(reading), False)
            known = self.meters.setdefault(meter, {"meter": meter})
            known["reading"] = seen.record
            known["readings"] = known.get("readings", 0) + 1
            return seen
        return None  # coe/req and coe/resp: between two meters, signed for them

    def _keep(self, seen: Verified) -> Seen:
        """Remember a verified ledger or transaction message; an older copy of a retained
        status changes nothing (and is not passed on: the mirror must not go back either)."""
        r, kind = seen.record, seen.kind
        if kind == "status":
            known = self.trades.get(r["ctp"])
            if known is not None and _age(known) > _age(r):
                return None
            self._trade(r)
        elif kind == "order":
            known = self.orders.get(r["id"])
            if known is not None and _age(known) > _age(r):
                return None
            self.orders[r["id"]] = r
            self._forget_orders()
        elif kind == "cleared":
            if r["k"] not in self.results and (not self.results or r["k"] > min(self.results)):
                self.fills += r["fills"]
                for product in PRODUCTS:
                    self.cleared_wh[product] += r[product]["wh"]
            self.results[r["k"]] = r
            for k in sorted(self.results)[:-RECENT_INTERVALS]:
                del self.results[k]
        elif kind == "account":
            known = self.accounts.get(r["account"])
            if known is not None and _age(known) > _age(r):
                return None
            self.accounts[r["account"]] = r | {"meter": self.meter_of.get(r["account"])}
        elif kind == "reject":
            self.rejects[r["reason"]] += 1
            self.recent_rejects.append(r)
        else:
            self.transactions[kind] += 1
            if kind == "ctp":
                self.parties[r["id"]] = (r["payer"], r["payee"], r["wh"])
        return seen

    def _trade(self, r: dict[str, Any]) -> None:
        trade = r["ctp"]
        if "payer" in r:
            self.parties[trade] = (r["payer"], r["payee"], r.get("wh", 0))
        before = self.trades.get(trade)
        was_final = before is not None and before["state"] in FINAL_TRADE
        if before is None or before["state"] != r["state"]:
            self.trade_states[r["state"]] += 1
        self.trades[trade] = r
        if r["state"] in FINAL_TRADE and not was_final:
            self._finished.append(trade)
            while len(self._finished) > RECENT_TRADES:
                old = self._finished.popleft()
                self.trades.pop(old, None)
                self.parties.pop(old, None)

    def _forget_orders(self) -> None:
        """Orders of intervals older than the results we keep are history: the chain has them."""
        if len(self.orders) <= 4 * RECENT_TRADES or not self.results:
            return
        oldest = min(self.results)
        for order_id in [o for o, r in self.orders.items() if r["k"] < oldest and r["state"] not in OPEN_ORDER]:
            del self.orders[order_id]

    def _ledger_state(self, topic: str, payload: bytes) -> Seen:
        """`online H` / `offline [H]`: plain text under the broker's ACL (validators alone write it)."""
        name = topic.rsplit("/", 1)[1]
        words = payload.decode(errors="replace").split()
        index = int(name[1:]) if name[1:].isdigit() else -1
        if index not in self.validators or not words or words[0] not in ("online", "offline"):
            raise Reject("decode", f"{topic}: not a validator's `online H` or `offline [H]`")
        seen = self.validators[index]
        seen.said, seen.online = True, words[0] == "online"
        if len(words) > 1 and words[1].isdigit():
            seen.height = max(seen.height, int(words[1]))
        state = {"validator": name, "online": seen.online, "height": seen.height}
        return Verified(topic, "ledger-state", state, True)

    def _block(self, topic: str, payload: bytes) -> Seen:
        try:
            block = Block.from_chain_bytes(payload)
        except BlockError as exc:
            raise Reject("decode", f"not a block: {exc}") from None
        validators = self.verifier.validators
        if block.valid_seals(validators) < quorum(len(validators)):
            raise Reject("signature", f"block #{block.header.height} is not sealed by a quorum of validators")
        r = {
            "height": block.header.height,
            "t_ms": block.header.t,
            "trades": len(block.trades),
            "seals": len(block.seals),
            "bytes": len(payload),
            "hash": block.header.hash.hex(),
        }
        if not self.blocks or self.blocks[-1]["height"] < r["height"]:
            if self.blocks and self.blocks[-1]["height"] + 1 == r["height"]:
                self.block_gaps_ms[0] += r["t_ms"] - self.blocks[-1]["t_ms"]
                self.block_gaps_ms[1] += 1
            self.blocks.append(r)
        return Verified(topic, "block", r, False)

    def _consensus(self, payload: bytes) -> None:
        """Rounds, from validator-signed consensus messages; anything else there is not ours to judge
        (a validator's probe to itself is not signed)."""
        try:
            message = consensus.open_signed(payload, self.verifier.validators)
        except consensus.ConsensusError:
            return
        seen = self.validators[message.sender]
        if message.kind == consensus.ROUND_CHANGE:
            seen.round_changes += 1
        if message.kind in (consensus.PROPOSAL, consensus.PREPARE, consensus.COMMIT, consensus.ROUND_CHANGE):
            if message.h > seen.at_height:
                seen.at_height, seen.round = message.h, message.r
            elif message.h == seen.at_height:
                seen.round = max(seen.round, message.r)

    # -- what the views read --

    def meter_summary(self, meter: str) -> dict[str, Any]:
        """One meter's current facts for Home Assistant: power, energy, money, trades."""
        known = self.meters.get(meter, {"meter": meter})
        reading = known.get("reading") or {}
        accounts = {a for a, m in self.meter_of.items() if m == meter}
        current = sorted(accounts - self.replaced)
        account = next((self.accounts[a] for a in current if a in self.accounts), None)
        mine = [t for t, (payer, payee, _) in self.parties.items() if payer in accounts or payee in accounts]
        statuses = sorted((self.trades[t] for t in mine if t in self.trades), key=_age)
        return {
            "meter": meter,
            "online": known.get("online", False),
            "w": reading.get("w"),
            "wh_in": reading.get("wh_in"),
            "wh_out": reading.get("wh_out"),
            "balance_units": account["balance_units"] if account else None,
            "held_units": account["held_units"] if account else None,
            "open_trades": sum(s["state"] not in FINAL_TRADE for s in statuses),
            "last_trade": statuses[-1]["ctp"] if statuses else None,
            "last_trade_state": statuses[-1]["state"] if statuses else None,
        }

    def snapshot(self) -> dict[str, Any]:
        """Everything the views show, as JSON: the terminal view, the exporter and the page."""
        meters = sorted(set(self.meters) | set(self.meter_of.values()))
        trades = [self._named(t) for t in sorted(self.trades.values(), key=_age, reverse=True)]
        return {
            "meters": [self.meters.get(m, {"meter": m}) | {"summary": self.meter_summary(m)} for m in meters],
            "trades": trades,
            "orders": sorted(self.orders.values(), key=lambda o: (o["k"], o["side"], o["id"])),
            "results": [self.results[k] for k in sorted(self.results)],
            "accounts": sorted(self.accounts.values(), key=lambda a: a["account"]),
            "validators": [
                {"validator": f"v{i}", **vars(v)} for i, v in sorted(self.validators.items(), key=lambda kv: kv[0])
            ],
            "blocks": list(self.blocks),
            "rejects": dict(self.rejects),
            "recent_rejects": list(self.recent_rejects),
            "unverified": dict(self.unverified),
            "recent_unverified": list(self.recent_unverified),  # topic and reason only: never the data
            "transactions": dict(self.transactions),
            "interval_s": self.genesis.market.interval_s if self.genesis.market else None,
        }

    def _named(self, trade: dict[str, Any]) -> dict[str, Any]:
        """A trade's status with its parties' meters and Wh, from the status or its CTP."""
        payer, payee, wh = self.parties.get(trade["ctp"], ("", "", None))
        names = {"payer_meter": self.meter_of.get(payer), "payee_meter": self.meter_of.get(payee)}
        return trade | names | {"trade_wh": wh}


def _age(r: dict[str, Any]) -> tuple[int, int]:
    """(height, time) of a ledger record: a receiver keeps the newest (docs/PROTOCOL.md §9.6)."""
    return (r.get("h") or 0, r.get("t_ms") or 0)
