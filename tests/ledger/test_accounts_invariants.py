"""Property tests of accounts after launch (docs/PROTOCOL.md §10) mixed with trading:
hypothesis plays registers, funds, payouts, retirements and rotations (by the old key or the
operator, to fresh or taken keys) among CTPs, ERCs, cancels, orders, export records and
copies of earlier messages, signed by households' current keys and sometimes by keys a
rotation replaced. After every block: balances + holds = genesis + funded - withdrawn, no
balance or hold is negative, holds are the held trades and open orders' escrow under the
key that holds each account now, a replaced key holds nothing, and no message from a
retired account or a replaced key started anything. At the end the log audits, and
replaying it into a fresh state, or restoring the validator's tables, gives the same state;
and so do blocks decided after a restart from the tables halfway.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import event, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from ledger.audit import audit
from ledger.draft import replay
from ledger.market_audit import escrow
from ledger.state import LedgerState
from ledger.workload import SimCommunity, pk
from tests.support.accounts import IN_GENESIS, AccountsChain, Operator, key, signing_as
from tests.support.ledger import NOW
from tests.support.market import SOURCES, I, K, Market
from wire.messages import Ask, Bid, Cancel, Ctp, CtpState, Fund, Register, Retire, Rotate, Seal, Withdraw, open_message

HOUSEHOLDS = 6
STEPS = (1, I // 3, I, 3 * I)  # ms between blocks: within, across gates and expiries
STARTS = {"ctp", "ask", "bid", "seal", "fund", "register", "rotate"}  # what a retired account may not do


def snapshot(state: LedgerState) -> tuple:
    """Everything a state holds, §10 included, comparable across a replay and a restore."""
    market = state.market
    assert market is not None
    return (
        (state.height, state.tip, state.t, state.balances, state.held, state.refused, state.revoked),
        (state.funded, state.withdrawn, state.refs, state.retired, state.rotated, state.registered),
        dict(state.ctps),
        (market.terms, market.orders, market.by_k, market.pending, market.results),
        # Looked up one by one, as blocks read them: RAM first, then the archive.
        ({key: market.exports[key] for key in market.exports}, {key: market.tokens[key] for key in market.tokens}),
        (market.ks, {m.meter: market.last_export(m.meter) for m in market.terms.meters}),
    )


def check_invariants(state: LedgerState) -> None:
    assert state.total() == state.expected_total(), "balances + holds = genesis + funded - withdrawn"
    assert min((*state.balances.values(), *state.held.values())) >= 0, "nothing negative"
    held = dict.fromkeys(state.balances, 0) | escrow(state.market, state.current)
    for record in state.open.values():
        held[state.current(record.ctp.payer)] += record.ctp.amount
    assert held == state.held, "holds are the held trades and open orders' escrow, under current keys"
    for old in state.rotated:
        assert (state.balances[old], state.held[old]) == (0, 0), "a replaced key holds nothing"


def actors(typ: str, raw: bytes) -> list[bytes]:
    """The account keys a message acts for: who it starts something for or signs as."""
    body = open_message(raw).body
    if isinstance(body, Ctp):
        return [body.payer, body.payee]
    if isinstance(body, Ask):
        return [body.seller]
    if isinstance(body, (Bid, Seal)):
        return [body.buyer]
    if isinstance(body, (Fund, Register, Retire, Rotate)):
        return [body.account]
    if isinstance(body, Cancel):
        return [body.payer]
    if isinstance(body, Withdraw):
        return [body.by]
    return []


def check_block(
    retired: set[bytes], replaced: set[bytes], blocked: list[tuple[str, bytes]], reasons: list[str | None]
) -> None:
    """No accepted message started anything for a retired account or acted with a replaced key
    (`retired` and `replaced` before the block; then as the block's messages retire and replace)."""
    seen = set()
    for (typ, raw), reason in zip(blocked, reasons, strict=True):
        if reason is not None or (typ, raw) in seen:  # a copy in the same batch is a redelivery: skipped
            seen.add((typ, raw))
            continue
        seen.add((typ, raw))
        keys = actors(typ, raw)
        assert not (typ in STARTS and retired.intersection(keys)), f"a retired account's {typ} was applied"
        assert not (typ != "register" and replaced.intersection(keys)), f"a replaced key's {typ} was applied"
        body = open_message(raw).body
        if isinstance(body, Retire):
            retired.add(body.account)
        if isinstance(body, Rotate):
            replaced.add(body.account)


class Traffic:
    """Draws the next block's messages from what the chain holds so far."""

    def __init__(self, data, chain: AccountsChain, c: SimCommunity):
        self.data, self.chain, self.c = data, chain, c
        self.m, self.op = Market(c), Operator(c)
        self.keys: list[list[SigningKey]] = [[h.account] for h in c.households]  # every key, first = genesis's
        self.owner = {pk(h.account): h.index for h in c.households}
        self.sent: list[tuple[str, bytes]] = []
        self.totals = [0] * HOUSEHOLDS  # each meter's export counter
        self.exported: dict[int, int] = {}  # household -> last interval it sent a record for
        self.refs = 0

    def draw(self, label: str, strategy):
        return self.data.draw(strategy, label=label)

    def follow(self) -> None:
        """Households sign with the key that holds their account now."""
        for h, keys in enumerate(self.keys):
            now = self.chain.state.current(pk(keys[0]))
            self.c.households[h].account = next((k for k in keys if pk(k) == now), keys[0])

    def batch(self, t: int) -> list[tuple[str, bytes]]:
        kinds = ["register", "fund", "fund", "payout", "retire", "rotate", "rotate", "ctp", "ctp", "erc", "erc"]
        kinds += ["erc", "erc", "cancel", "ask", "bid", "withdraw", "export", "export", "again"]
        out: list[tuple[str, bytes]] = []
        self.ended: set[bytes] = set()  # trades this batch confirms or cancels already
        for kind in self.draw("kinds", st.lists(st.sampled_from(kinds), max_size=8)):
            h = self.draw("household", st.integers(0, HOUSEHOLDS - 1))
            signer = self.draw("signer", st.sampled_from(self.keys[h]))  # mostly the current one: few rotate
            with signing_as(self.c, h, signer):
                msg = self.one(kind, h, t)
            if msg is not None:
                self.sent.append(msg)
                out.append(msg)
        return out

    def ref(self) -> str:
        """A payment reference: a new one, or sometimes one used before."""
        if self.refs and self.draw("old ref", st.booleans()):
            return f"ref-{self.draw('ref', st.integers(0, self.refs - 1))}"
        self.refs += 1
        return f"ref-{self.refs - 1}"

    def one(self, kind: str, h: int, t: int) -> tuple[str, bytes] | None:
        c, m, op, draw = self.c, self.m, self.op, self.draw
        account = pk(c.households[h].account)
        k = t // I + draw("k", st.integers(0, 2))
        if kind == "register":  # a new household's comes with its meter; an account's own meter is a duplicate
            with_meter = h >= IN_GENESIS or draw("meter", st.booleans())
            meters = [(h, draw("source", st.sampled_from(["", "solar", "grid"])))] if with_meter else []
            return "register", op.register(account, *meters, t=t)
        if kind in ("fund", "payout"):
            amount = draw("amount", st.integers(1, 400))
            return kind, (op.fund if kind == "fund" else op.payout)(account, amount, self.ref(), t=t)
        if kind == "retire" and draw("retire", st.integers(0, 3)) == 0:  # rarely: a retired household is quiet
            return "retire", op.retire(account, t=t)
        if kind == "rotate":
            return "rotate", self.rotate(h, account, t)
        if kind == "ctp":
            payee = draw("payee", st.integers(0, HOUSEHOLDS - 1))
            exp = t + draw("exp", st.sampled_from([I // 2, 3 * I]))
            return "ctp", c.ctp(h, payee, amount=draw("amount", st.integers(0, 60)), wh=0, exp=exp, t=t)
        if kind in ("erc", "cancel"):
            return self.finish(kind, t)
        if kind == "ask":
            src = SOURCES[h] if h < len(SOURCES) else "solar"
            return "ask", m.ask(h, draw("wh", st.integers(1, 20)), draw("p", st.integers(0, 6)), k, src=src or None)
        if kind == "bid":
            return "bid", m.bid(h, draw("wh", st.integers(1, 10)), draw("p", st.integers(3, 12)), k, t=t)
        if kind == "withdraw" and self.chain.state.market.orders:
            orders = sorted(self.chain.state.market.orders.values(), key=lambda o: o.id)
            return "withdraw", m.withdraw(h, draw("order", st.sampled_from(orders)).raw)
        if kind == "export":
            ended = t // I - 1
            if self.exported.get(h, ended - 1) < ended:
                wh = draw("exported", st.integers(0, 30))
                self.totals[h] += wh
                self.exported[h] = ended
                return "export", c.export(h, ended, wh, self.totals[h], t=t)
        if kind == "again" and self.sent:
            return draw("copy", st.sampled_from(self.sent))
        return None

    def rotate(self, h: int, account: bytes, t: int) -> bytes:
        """To a fresh key, or (key-taken) another household's; by the old key or the operator."""
        if draw_taken := self.draw("taken", st.integers(0, 4)) == 0:
            new = pk(self.c.households[(h + 1) % HOUSEHOLDS].account)
        else:
            fresh = key(f"household {h} key {len(self.keys[h])}")
            self.keys[h].append(fresh)
            self.owner[pk(fresh)] = h
            new = pk(fresh)
        event(f"rotation to a taken key: {draw_taken}")
        by = self.c.households[h].account if self.draw("by self", st.booleans()) else None
        return self.op.rotate(account, new, by=by, t=t)

    def finish(self, kind: str, t: int) -> tuple[str, bytes] | None:
        """An ERC of a held trade (a CTP or a fill), or the payer's cancel of one."""
        held = sorted((r for r in self.chain.state.open.values() if r.ctp.id not in self.ended), key=lambda r: r.ctp.id)
        if not held:
            return None
        record = self.draw("trade", st.sampled_from(held))
        self.ended.add(record.ctp.id)
        payer = self.owner[record.ctp.payer]
        if kind == "cancel":
            return ("cancel", self.c.cancel(record.raw, t=t, by=payer)) if record.fill is None else None
        if record.fill is not None:
            return "erc", self.m.erc(payer, record.ctp.id, record.ctp.wh)
        return "erc", self.c.erc(record.raw, t=t, by=payer)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_account_invariants_hold_for_any_mix_of_operator_transactions_and_trading(data):
    c = SimCommunity(HOUSEHOLDS, NOW)
    with tempfile.TemporaryDirectory() as tmp:
        chain = AccountsChain(Path(tmp), c, balance=300)
        traffic = Traffic(data, chain, c)
        t, restarts = (K - 1) * I, 0
        for _ in range(data.draw(st.integers(1, 20), label="blocks")):
            t += data.draw(st.sampled_from(STEPS), label="step")
            if data.draw(st.integers(0, 5), label="restart") == 0:  # the next blocks come from the tables
                chain.restart()
                restarts += 1
            traffic.follow()
            blocked = traffic.batch(t)
            retired, replaced = set(chain.state.retired), set(chain.state.rotated)
            check_block(retired, replaced, blocked, chain.block(t, *blocked))
            check_invariants(chain.state)
        state = chain.state
        event(f"accounts opened: {min(len(state.balances) - IN_GENESIS, 2)}+")
        event(f"rotations: {min(len(state.rotated), 2)}+, retired: {min(len(state.retired), 1)}+")
        event(f"funded: {state.funded > 0}, withdrawn: {state.withdrawn > 0}")
        settled = [r.ctp for r in state.ctps.values() if r.state == CtpState.SETTLED]
        event(f"settled: {min(len(settled), 3)}+, restarts: {min(restarts, 2)}+")
        event(f"settled with a replaced key: {any({t.payer, t.payee} & state.rotated.keys() for t in settled)}")
        registered = {m.meter for m in state.registered}
        event(f"a registered meter's export: {any(m in registered for m, _ in state.market.exports)}")
        assert audit(chain.store).height == state.height
        live = snapshot(state)
        fresh = LedgerState(state.genesis)
        verifier = state.genesis.verifier()
        for height in range(1, state.height + 1):
            block = chain.store.block(height)
            assert block is not None
            fresh.commit(replay(fresh, verifier, block.header.t, block.inputs).changes)
        assert snapshot(fresh) == live, "replaying the blocks gives the same state"
        assert snapshot(chain.store.load()) == live, "restoring the tables gives the same state"
        chain.store.close()
