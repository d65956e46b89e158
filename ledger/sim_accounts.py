"""Accounts after launch in the consensus simulation (ledger.sim --market, docs/PROTOCOL.md
§10): the operator's traffic, each message with the time the operator or a household would
send it, and the end checks of what the honest validators hold of accounts.

The market chain's genesis lists the community's operator. Besides the market's traffic
(ledger.sim_market), which it leaves byte for byte as it was, the operator registers two
households that join after the genesis (6, a solar seller, and 7, a buyer; one meter each,
with devcerts from the genesis' CA) and funds them; they trade: a direct CTP from 7 to 6
and, in a fourth interval, 6's ask filled by 7's bid and by the bids of two rotated keys.
Household 3 replaces its key itself and household 4's is replaced by the operator (lost)
while their orders of the third interval are open, so the new keys pay those fills and
reveal the old keys' sealed bids; the new keys trade, and withdraw an order the old key
placed. Household 2 (the grid seller) is retired after the third interval's gate, so its
fills settle after, and its balance is paid out. And every refusal §10.2 names comes up:
a meter taken, a devcert of another CA, a register, fund, payout and rotation sent twice, a
fund of no account and one over the limit, a payout beyond the free balance, a rotation to
a key in use, messages of a replaced key or about a retired account, and one signed by a
household posing as the operator (refused at the door: `not-operator`).

Faults reorder all this from seed to seed (a retire decided after the ask it should
refuse, a reveal by a new key before its rotation): the checks ask only that the honest
validators agree, keep the money invariant and pass the audit, whatever was accepted.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ledger.accounts import ACCOUNT_TYPES, FUND, PAYOUT
from ledger.audit import audit
from ledger.block import Block
from ledger.draft import replay
from ledger.genesis import MAX_UNITS, Genesis
from ledger.sim_market import INTERVALS, I, predicted_fills, snapshot
from ledger.state import LedgerState
from ledger.store import LedgerStore
from ledger.workload import YEAR_MS, SimCommunity, pk
from wire.cose import message_hash
from wire.market import fill_id
from wire.messages import DevCert, Fund, Payout, Register, Retire, Reveal, Rotate, open_message

Timed = tuple[int, str, bytes]  # (ms after the start to send it, typ, raw)


def accounts_traffic(sim: SimCommunity, now: int, market: Sequence[Timed]) -> list[Timed]:
    """The operator's and the rotated and added households' messages, on the community of
    ledger.sim_market (households 0-5, in a genesis listing sim.operator), whose market
    traffic is `market`. Adds households 6, 7 and 8 to `sim` (8 only lends a devcert)."""
    out: list[Timed] = []

    def send(at: int, typ: str, raw: bytes) -> None:
        out.append((at, typ, raw))

    def t(at: int) -> int:
        return now + at

    house = sim.households
    seller, buyer = sim.add_household("solar"), sim.add_household()  # 6 and 7
    lender = sim.add_household()  # 8: its devcert is registered to a retired account
    key = {h.index: pk(h.account) for h in house}  # each household's key in the genesis
    gates = [(now // I + 1 + i) * I - now for i in range(INTERVALS + 1)]  # ms after the start
    fourth = now // I + 1 + INTERVALS  # the interval after the market traffic's three
    # Registration and funding, in the first seconds; each refusal sent after what makes it one.
    send(500, "register", sim.register_household(seller, t(500)))
    send(700, "register", sim.register_household(buyer, t(700)))
    send(900, "register", sim.register(key[7], [(house[0].devcert, "")], t(900)))  # meter-taken
    send(1_000, "register", sim.register(key[7], [(_foreign_devcert(sim), "")], t(1_000)))  # cert
    send(2_000, "register", sim.register_household(seller, t(2_000)))  # duplicate
    send(1_500, "fund", sim.fund(key[6], 800, "bank/6/1", t(1_500)))
    send(1_600, "fund", sim.fund(key[7], 300, "bank/7/1", t(1_600)))
    send(2_500, "fund", sim.fund(key[6], 800, "bank/6/1", t(2_500)))  # duplicate: the operator sent it again
    send(2_600, "fund", sim.fund(pk(sim.account_key("stranger")), 100, "bank/x", t(2_600)))  # unknown-account
    send(2_700, "fund", sim.fund(key[0], MAX_UNITS, "bank/huge", t(2_700)))  # over-limit: any chain holding money
    send(2_800, "fund", sim.fund(key[0], 5, "bank/self", t(2_800), op=house[1].account))  # not-operator, at the door
    # A direct CTP between the new households, delivered in the first interval (§9.4).
    ctp = sim.ctp(7, 6, amount=20, wh=10, exp=now + 60_000, t=t(5_000))
    send(5_000, "ctp", ctp)
    send(gates[1] + 2_500, "erc", sim.erc(ctp, t=t(gates[1] + 2_500)))
    total = 0
    for i, gate in enumerate(gates):  # the new solar meter's export records, 15 Wh then 30
        wh = 30 if i == INTERVALS else 15
        total += wh
        end = gate + I
        send(end + 1_500, "export", sim.export(6, now // I + 1 + i, wh, total, t=t(end + 1_500)))
    # Payouts while the first interval runs (a fund's reference is no payout's).
    send(12_000, "payout", sim.payout(key[0], 300, "pay/0/1", t(12_000)))
    send(13_000, "payout", sim.payout(key[0], 300, "pay/0/1", t(13_000)))  # duplicate
    send(14_000, "payout", sim.payout(key[1], 10**9, "pay/1/big", t(14_000)))  # insufficient-funds
    send(15_000, "payout", sim.payout(key[1], 100, "bank/6/1", t(15_000)))  # a fund's ref: payouts' are apart
    # Rotations while the third interval's orders are open (gate 30 s): household 3's own,
    # household 4's by the operator. Messages of the old keys are made before.
    third_order = gates[2] - 8_000
    old_bid = sim.bid(3, 10, 3, fourth, t=t(third_order + 2_000))  # withdrawn by the new key
    send(third_order + 2_000, "bid", old_bid)
    late_old_bid = sim.bid(3, 5, 3, fourth, t=t(gates[3] - 8_000))  # rotated
    rotate_at = gates[2] - 4_000
    new3, new4 = sim.account_key("3 new"), sim.account_key("4 new")
    send(rotate_at, "rotate", sim.rotate(3, new3, t=t(rotate_at)))
    send(rotate_at + 1_000, "rotate", sim.rotate(4, new4, by_operator=True, t=t(rotate_at + 1_000)))
    again = sim.rotation(key[4], pk(new4), by=sim.operator, t=t(rotate_at + 2_000))  # duplicate
    send(rotate_at + 2_000, "rotate", again)
    send(rotate_at + 2_500, "rotate", sim.rotation(pk(new3), key[0], by=new3, t=t(rotate_at + 2_500)))  # key-taken
    send(rotate_at + 3_000, "fund", sim.fund(key[3], 50, "bank/3/old", t(rotate_at + 3_000)))  # rotated
    send(gates[3] - 8_000, "bid", late_old_bid)
    for at, typ, raw in market:  # the new keys reveal what the old ones sealed, as their meters would
        if typ == "reveal" and at > rotate_at and open_message(raw, Reveal).body.buyer in (key[3], key[4]):
            send(at + 100, "reveal", sim.reveal_again(raw, t=t(at + 100)))
    send(gates[3] - 7_000, "withdraw", sim.withdraw(old_bid, t=t(gates[3] - 7_000)))  # by the new key
    # Household 2 retired after the third gate: its fills there still settle, then it is paid out.
    retire_at = gates[2] + 5_000
    send(retire_at, "retire", sim.retire(key[2], t(retire_at)))
    send(retire_at + 1_000, "ask", sim.ask(2, 20, 2, fourth, t=t(retire_at + 1_000)))  # retired
    send(retire_at + 1_200, "fund", sim.fund(key[2], 10, "bank/2/late", t(retire_at + 1_200)))  # retired
    fresh = pk(sim.account_key("2 new"))
    send(retire_at + 1_400, "rotate", sim.rotation(key[2], fresh, by=sim.operator, t=t(retire_at + 1_400)))
    send(retire_at + 1_600, "register", sim.register(key[2], [(lender.devcert, "")], t(retire_at + 1_600)))
    send(retire_at + 1_800, "retire", sim.retire(key[2], t(retire_at + 1_800)))  # duplicate
    send(gates[3] + 5_000, "payout", sim.payout(key[2], 1_500, "close/2", t(gates[3] + 5_000)))
    send(gates[3] + 5_200, "payout", sim.payout(key[6], 100, "pay/6/1", t(gates[3] + 5_200)))
    # The fourth interval: the new seller's ask, the new keys' and the new buyer's bids.
    at = gates[3] - 8_000
    asks = [sim.ask(6, 30, 2, fourth, t=t(at))]
    bids = [
        sim.bid(3, 20, 4, fourth, green=True, t=t(at)),
        sim.bid(4, 15, 3, fourth, t=t(at)),
        sim.bid(7, 10, 3, fourth, t=t(at)),
    ]
    out += [(at, "ask", a) for a in asks] + [(at + 200, "bid", b) for b in bids]
    erc_at = gates[3] + I + 2_500
    for bid, ask, wh in predicted_fills(bids, asks):
        trade = fill_id(message_hash(bid), message_hash(ask))
        send(erc_at, "erc", sim.fill_erc(bid, trade, wh, t=t(erc_at)))
    # A new key pays a direct CTP, delivered by household 0's third-interval export.
    direct = sim.ctp(3, 0, amount=15, wh=5, exp=now + 70_000, t=t(gates[2] + 4_000))
    send(gates[2] + 4_000, "ctp", direct)
    send(gates[2] + I + 2_500, "erc", sim.erc(direct, t=t(gates[2] + I + 2_500)))
    return out


def _foreign_devcert(sim: SimCommunity) -> bytes:
    """A devcert for a meter that no CA of the genesis signed."""
    issuer = sim.account_key("another CA")
    device = sim.account_key("another device")
    return DevCert(meter="m0099", pk=pk(device), iss=pk(issuer), nbf=sim.now - YEAR_MS, exp=sim.now + YEAR_MS).sign(
        issuer
    )


# -- the checks --


def held(state: LedgerState) -> dict:
    """What honest validators that committed the same blocks must hold alike: the market's
    state (ledger.sim_market.snapshot) and the accounts' history."""
    return {**snapshot(state), **account_snapshot(state)}


def account_snapshot(state: LedgerState) -> dict:
    """What replicas that committed the same blocks must hold alike of §10's history."""
    return {
        "funded": state.funded,
        "withdrawn": state.withdrawn,
        "refs": sorted(state.refs),
        "retired": dict(state.retired),
        "rotated": dict(state.rotated),
        "registered": list(state.registered),
    }


def account_problems(state: LedgerState, accepted: Iterable[tuple[str, bytes]]) -> list[str]:
    """§10's invariants of one committed state, recomputed from the account messages its
    blocks accepted (`accepted`, in block order) rather than from the bookkeeping: funded and
    withdrawn are the sums of the funds and payouts, each reference taken once, the retired
    accounts, rotations and registered meters are the messages', and balances + holds =
    genesis + funded − withdrawn, no account below zero."""
    funded = withdrawn = 0
    refs: list[tuple[str, str]] = []
    retired: set[bytes] = set()
    rotated: dict[bytes, bytes] = {}  # as LedgerState.rotated: every replaced key -> the current one
    market = state.genesis.market
    known = {m.meter for m in market.meters} if market is not None else set()
    meters: list[str] = []  # registered after the genesis, in order
    for typ, raw in accepted:
        body = open_message(raw, typ).body
        if isinstance(body, Fund):
            funded += body.amount
            refs.append((FUND, body.ref))
        elif isinstance(body, Payout):
            withdrawn += body.amount
            refs.append((PAYOUT, body.ref))
        elif isinstance(body, Retire):
            retired.add(body.account)
        elif isinstance(body, Rotate):
            rotated = {old: body.new if new == body.account else new for old, new in rotated.items()}
            rotated[body.account] = body.new
        elif isinstance(body, Register):
            for cert, _source in body.meters:
                meter = open_message(cert, DevCert).body.meter
                if meter not in known:
                    known.add(meter)
                    meters.append(meter)
    problems = []
    if (state.funded, state.withdrawn) != (funded, withdrawn):
        problems.append(f"funded {state.funded} withdrawn {state.withdrawn}; its blocks say {funded} and {withdrawn}")
    if len(set(refs)) != len(refs) or set(refs) != state.refs:
        problems.append(f"references {sorted(state.refs)}; its blocks took {refs}")
    if set(state.retired) != retired:
        problems.append(f"{len(state.retired)} accounts retired, its blocks retired {len(retired)}")
    if state.rotated != rotated:
        problems.append(f"{len(state.rotated)} keys replaced, its blocks' rotations replace {len(rotated)}")
    if [m.meter for m in state.registered] != meters:
        problems.append(f"meters {[m.meter for m in state.registered]} registered, its blocks registered {meters}")
    total = sum(state.balances.values()) + sum(state.held.values())
    expected = state.genesis.total + funded - withdrawn
    if total != expected:
        problems.append(f"balances + holds are {total}, genesis + funded - withdrawn {expected}")
    if any(units < 0 for units in (*state.balances.values(), *state.held.values())):
        problems.append("a balance or hold is negative")
    return problems


def accepted_account_messages(inputs: Iterable[tuple[str, bytes]], reasons: Iterable[str | None]) -> list:
    """The §10 messages of a block's inputs that it accepted, in order."""
    pairs = zip(inputs, reasons, strict=True)
    return [(typ, raw) for (typ, raw), reason in pairs if typ in ACCOUNT_TYPES and reason is None]


def audited(genesis: Genesis, chain: Sequence[Block]) -> dict:
    """`spb-ledger audit` of a validator database holding `chain`, written as a validator
    writes its blocks (each block's changes, from a replay); then what a validator restarted
    from that database holds (`held`). AuditFailure or StoreError if either fails."""
    with tempfile.TemporaryDirectory(prefix="spb-sim-") as tmp:
        store = LedgerStore(Path(tmp) / "ledger.db", genesis)
        try:
            store.db.execute("PRAGMA synchronous=OFF")  # a scratch database: no crash to survive
            state, verifier = LedgerState(genesis), genesis.verifier()
            for block in chain:
                changes = replay(state, verifier, block.header.t, block.inputs).changes
                state.commit(changes)
                store.commit(changes, block, [])
            audit(store)
            return held(store.load())
        finally:
            store.close()
