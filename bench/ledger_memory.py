"""Start-up time and peak RSS of a validator after 1,000,000 settled trades, beside 10,000.

Issue 17 item 1: memory and start-up must not grow with history (target: the larger within
1.5x of the smaller). For each size the bench builds a validator's database, then, in a fresh
subprocess per database, opens the store and loads the state to ready (what LedgerNode does
at start-up) and reports the wall time and the subprocess's peak RSS (getrusage maxrss).
The same subprocess also times one lookup of a finished trade (a block's duplicate check).

How the databases are built, and why the shortcut does not change what is measured: signing
and verifying 1,000,000 CTPs, ERCs and their CoEs through the real draft would take most of
an hour here. Instead each block's Changes are made directly: every trade is a CTP really
signed by its payer (so its row's bytes and hash are genuine), held and settled in the same
block by a made-up ERC hash and one-time key; the header carries the real txs and CTP roots
and is sealed by the validator; LedgerStore.commit writes it exactly as for a drafted block
and LedgerState.commit checks it (money, the tree's root). What start-up reads (accounts,
held CTPs, the tree snapshot, refused, revoked, the tip) has the same shape and size as after
real traffic; only the block inputs are missing (no ERC bytes), so `spb-ledger audit` would
fail on these databases: they are for this measurement only. Each ends with `--open` CTPs
held, as a live ledger has.

Run: `make bench` or `python bench/ledger_memory.py [--sizes 10000,1000000] [--open 100]
[--per-block 1000] [--dir DIR]`.

`--market 1000,100000` measures the market instead (decision 0013, its market section): a
market chain (6 households, 5-minute intervals) with one real block (an ask for the next
interval), then, older than a day, that many cleared intervals, each with one really signed
ask, its result and six export records, written straight into the tables as LedgerStore.commit
writes them (the blocks that would have decided them are left out: start-up reads no block
but the tip, and `spb-ledger audit` would fail on these databases). The lookup timed is of
the oldest ask, as a copy of it asks (the archive's primary key).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from hashlib import sha256
from pathlib import Path

from ledger.block import Block, Header, merkle_root, trade_bytes, trade_hash
from ledger.draft import MAX_HOLD_MS
from ledger.market import KEEP_MS
from ledger.node import LedgerNode
from ledger.state import Changes, CtpRecord, LedgerState
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity, pk
from wire.cose import message_hash
from wire.messages import Ctp, CtpState

TARGET = 1.5
NOW = 1_800_000_000_000
HOUSEHOLDS = 8


def build(root: Path, trades: int, open_ctps: int, per_block: int) -> None:
    """A validator's ledger dir after `trades` settled trades and `open_ctps` held ones."""
    community = SimCommunity(HOUSEHOLDS, NOW)
    community.ledger_dir(root, balance=10 * (trades + open_ctps))
    node = LedgerNode(ValidatorIdentity.load(root, 0))
    state, store = node.state, node.store
    accounts = [h.account for h in community.households]
    meter = bytes(32)
    t, made = NOW, 0
    while made < trades + open_ctps:
        t += 1_000
        n = min(per_block, trades + open_ctps - made)
        settle = max(0, min(n, trades - made))
        records, balances, held, trade_list = {}, {}, {}, []
        for i in range(made, made + n):
            payer, payee = accounts[i % HOUSEHOLDS], accounts[(i + 1) % HOUSEHOLDS]
            body = Ctp(
                id=sha256(b"ctp%d" % i).digest()[:16],
                payer=pk(payer),
                payee=pk(payee),
                amount=1,
                wh=1,
                exp=t + MAX_HOLD_MS,
                meter=meter,
                t=t,
            )
            raw = body.sign(payer)
            digest = message_hash(raw)
            balances[body.payer] = balances.get(body.payer, state.balances[body.payer]) - 1
            if i - made < settle:
                erc_hash, erc_pk = sha256(b"erc%d" % i).digest(), sha256(b"pk%d" % i).digest()
                balances[body.payee] = balances.get(body.payee, state.balances[body.payee]) + 1
                held.setdefault(body.payer, state.held[body.payer])
                held.setdefault(body.payee, state.held[body.payee])
                record = CtpRecord(body, raw, digest, i, CtpState.SETTLED, state.height + 1, erc_hash, erc_pk, t)
                trade_list.append(trade_bytes(raw, erc_hash))
            else:
                held[body.payer] = held.get(body.payer, state.held[body.payer]) + 1
                held.setdefault(body.payee, state.held[body.payee])
                balances.setdefault(body.payee, state.balances[body.payee])
                record = CtpRecord(body, raw, digest, i, CtpState.HELD, state.height + 1, digest, t=t)
            records[body.id] = record
        for key in balances.keys() | held.keys():
            balances.setdefault(key, state.balances[key])
            held.setdefault(key, state.held[key])
        tree = state.tree.change({r.index: r.leaf() for r in records.values()})
        header = Header(
            state.height + 1,
            state.tip,
            t,
            txs=merkle_root([trade_hash(x) for x in trade_list]),
            ctps=tree.root,
            inputs=merkle_root([]),
        )
        finished = [r.index for r in records.values() if r.state == CtpState.SETTLED]
        changes = Changes(
            header,
            balances,
            held,
            records,
            known=state.tree.size,
            revoked={},
            refused={},
            ctp_rejects={},
            settled=tuple(r.ctp.id for r in records.values() if r.state == CtpState.SETTLED),
            tree=tree,
            pruned=state.tree.sealing(tree, finished),
        )
        block = Block(header, tuple(trade_list), (), ()).sealed(0, node.key)
        store.commit(changes, block, [])
        state.commit(changes)
        made += n
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    node.close()


def build_market(root: Path, intervals: int) -> None:
    """A market validator's ledger dir with `intervals` cleared intervals behind a day (see above)."""
    community = SimCommunity(6, NOW, sources=("solar", "wind", "grid"))
    terms = community.market_terms(interval_s=300)
    community.ledger_dir(root, balance=10_000, market=terms)
    node = LedgerNode(ValidatorIdentity.load(root, 0))
    now_k = terms.interval(NOW)
    node.decide([("ask", community.ask(0, 10, 3, now_k + 1))], NOW)
    orders, results, exports = [], [], []
    for j in range(intervals):
        k = now_k - 2 * KEEP_MS // terms.interval_ms - intervals + j
        raw = community.ask(j % 3, 10, 3, k, t=NOW)
        digest = message_hash(raw)
        orders.append((digest[:16], k, raw, digest, "unfilled", 0, 1, b"", b""))
        results.append((k, 0, 1, None, 0, 3, 0, 0))
        exports += [(h.meter_id, k, 5, 5 * (j + 1), 0, 1) for h in community.households]
    node.close()
    db = sqlite3.connect(identity_db(root))  # one transaction, then a checkpoint that empties the WAL
    with db:
        db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", orders)
        db.executemany("INSERT INTO intervals VALUES (?, ?, ?, ?, ?, ?, ?, ?)", results)
        db.executemany("INSERT INTO exports VALUES (?, ?, ?, ?, ?, ?)", exports)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def identity_db(root: Path) -> Path:
    return ValidatorIdentity.load(root, 0, with_key=False).db_path


def load_timed(root: Path) -> tuple[ValidatorIdentity, LedgerStore, LedgerState, float]:
    """What a validator does at start: open its store and load the state; and how long it took."""
    began = time.perf_counter()
    identity = ValidatorIdentity.load(root, 0, with_key=False)
    store = LedgerStore(identity.db_path, identity.genesis)
    state = store.load()
    return identity, store, state, time.perf_counter() - began


def start_market(root: Path) -> dict:
    """Run in a fresh process: open a market validator's store and load its state."""
    identity, store, state, ready = load_timed(root)
    market = state.market
    assert market is not None, "a market chain"
    first = store.db.execute("SELECT id FROM orders ORDER BY k LIMIT 1").fetchone()[0]
    began = time.perf_counter()
    found = market.order(first)
    lookup = time.perf_counter() - began
    assert found is not None and first not in market._orders, "the oldest order is in the archive"
    return {
        "start_s": ready,
        "lookup_ms": lookup * 1000,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "orders": len(market._orders),
        "exports": len(market._exports),
        "db_mb": os.path.getsize(identity.db_path) / 1e6,
    }


def start(root: Path) -> dict:
    """Run in a fresh process: open the store and load the state, as a validator starts."""
    identity, _store, state, ready = load_timed(root)
    first = sha256(b"ctp0").digest()[:16]
    began = time.perf_counter()
    found = state.record(first)
    lookup = time.perf_counter() - began
    assert found is not None and found.state == CtpState.SETTLED, "the first trade is in the archive"
    return {
        "start_s": ready,
        "lookup_ms": lookup * 1000,
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "height": state.height,
        "ctps": state.tree.size,
        "open": len(state.open),
        "tree_nodes": sum(len(level) for level in state.tree.levels),
        "db_mb": os.path.getsize(identity.db_path) / 1e6,
    }


def measure(root: Path, runs: int, how: str = "--start") -> dict:
    """The best of `runs` fresh subprocesses (start-up time), with their largest RSS."""
    results = []
    for _ in range(runs):
        command = [sys.executable, __file__, how, str(root)]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out))
    best = min(results, key=lambda r: r["start_s"])
    return best | {"maxrss_kb": max(r["maxrss_kb"] for r in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="settled trades per database, smallest first")
    parser.add_argument("--open", type=int, default=100, help="CTPs left held in each database")
    parser.add_argument("--per-block", type=int, default=1000, help="trades per block")
    parser.add_argument("--runs", type=int, default=3, help="start-ups measured per database (best time)")
    parser.add_argument("--dir", type=Path, help="keep the databases here (default: a temporary dir)")
    parser.add_argument("--market", help="measure the market instead: old intervals per database, e.g. 1000,100000")
    parser.add_argument("--start", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-market", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build-market", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build_market is not None:
        build_market(Path(args.build_market[0]), int(args.build_market[1]))
        return 0
    if args.start is not None:
        print(json.dumps(start(args.start)))
        return 0
    if args.start_market is not None:
        print(json.dumps(start_market(args.start_market)))
        return 0
    if args.market:
        return market_main([int(s) for s in args.market.split(",")], args.runs, args.dir)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        base = args.dir or Path(tmp)
        rows = []
        for size in sizes:
            root = base / f"trades-{size}"
            if not (root / "genesis.cbor").exists() and not root.exists():
                began = time.perf_counter()
                build(root, size, args.open, args.per_block)
                print(f"built {size:,} settled trades in {time.perf_counter() - began:.0f} s", flush=True)
            rows.append((size, measure(root, args.runs)))
    print(
        f"{'settled trades':>15} {'start-up s':>11} {'peak RSS MB':>12} {'tree nodes':>11} {'open':>5} "
        f"{'lookup ms':>10} {'db MB':>8}"
    )
    for size, r in rows:
        print(
            f"{size:>15,} {r['start_s']:>11.3f} {r['maxrss_kb'] / 1024:>12.1f} {r['tree_nodes']:>11} {r['open']:>5} "
            f"{r['lookup_ms']:>10.3f} {r['db_mb']:>8.1f}"
        )
    print_ratio(rows, "trades")
    return 0


def print_ratio(rows: list[tuple[int, dict]], what: str) -> None:
    """The largest history's start-up and peak RSS over the smallest's, beside the target."""
    (small, s), (large, b) = rows[0], rows[-1]
    time_ratio, rss_ratio = b["start_s"] / s["start_s"], b["maxrss_kb"] / s["maxrss_kb"]
    ok = time_ratio <= TARGET and rss_ratio <= TARGET
    print(
        f"{large:,} vs {small:,} {what}: start-up {time_ratio:.2f}x, peak RSS {rss_ratio:.2f}x "
        f"(target: within {TARGET}x) {'met' if ok else 'NOT met'}"
    )


def market_main(sizes: list[int], runs: int, keep: Path | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for size in sizes:
            root = (keep or Path(tmp)) / f"intervals-{size}"
            if not root.exists():  # in a process of its own: a child keeps its parent's peak RSS across exec
                began = time.perf_counter()
                subprocess.run([sys.executable, __file__, "--build-market", str(root), str(size)], check=True)
                print(f"built {size:,} old intervals in {time.perf_counter() - began:.0f} s", flush=True)
            rows.append((size, measure(root, runs, "--start-market")))
    print(
        f"{'old intervals':>14} {'start-up s':>11} {'peak RSS MB':>12} {'orders in RAM':>14} {'lookup ms':>10} "
        f"{'db MB':>7}"
    )
    for size, r in rows:
        print(
            f"{size:>14,} {r['start_s']:>11.4f} {r['maxrss_kb'] / 1024:>12.1f} {r['orders']:>14} "
            f"{r['lookup_ms']:>10.3f} {r['db_mb']:>7.1f}"
        )
    print_ratio(rows, "intervals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
