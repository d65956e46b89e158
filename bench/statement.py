"""How long a household's statement takes to build (decision 0017), beside its floor.

A statement opens every trade that ended in its period, every household's, to see whether it
names the account. The floor measured in the same run is just that: reading the period's
`ctps` rows and opening each trade, with no statement around it. Printed: the statement of a
whole chain of N settled trades (8 households: a quarter name household 0), of its last
block, and of an empty period after it (the scan of `ctps` by height alone), each the best
of 3.

The chain is built through the real draft (LedgerNode.decide): CTPs signed by their payers,
held in one block, settled by real ERCs in the next, 500 a block.

Run: `python bench/statement.py [--trades 10000]`.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from ledger.fill import trade_ctp
from ledger.node import LedgerNode
from ledger.statement import build_statement
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity, pk

NOW = 1_800_000_000_000
HOUSEHOLDS, PER_BLOCK = 8, 500


def best_ms(run, times: int = 3) -> float:
    best = float("inf")
    for _ in range(times):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades", type=int, default=10_000)
    args = parser.parse_args()
    c = SimCommunity(HOUSEHOLDS, NOW)
    with tempfile.TemporaryDirectory() as tmp:
        c.ledger_dir(Path(tmp), 10**12, block_ms=50)
        node = LedgerNode(ValidatorIdentity.load(Path(tmp), 0))
        t = NOW + 1_000
        for first in range(0, args.trades, PER_BLOCK):
            pairs = [(i % HOUSEHOLDS, (i + 1) % HOUSEHOLDS) for i in range(first, first + PER_BLOCK)]
            ctps = [c.ctp(payer, payee, 3, 1, NOW + 3_600_000) for payer, payee in pairs]
            node.decide([("ctp", raw) for raw in ctps], t)
            node.decide([("erc", c.erc(raw)) for raw in ctps], t + 1_000)
            t += 2_000
        store, account = node.store, pk(c.households[0].account)

        def floor() -> None:
            for (raw,) in store.db.execute("SELECT raw FROM ctps WHERE state = 'settled'").fetchall():
                trade_ctp(raw)

        whole = build_statement(store, account, NOW, t)
        print(f"statement of {args.trades} settled trades ({len(whole.lines)} lines, 8 households)")
        print(f"  whole chain      {best_ms(lambda: build_statement(store, account, NOW, t)):8.1f} ms")
        print(f"  floor (open each) {best_ms(floor):8.1f} ms")
        print(f"  last block       {best_ms(lambda: build_statement(store, account, t - 1_500, t)):8.1f} ms")
        print(f"  empty period     {best_ms(lambda: build_statement(store, account, t + 10, t + 20)):8.1f} ms")
        node.close()


if __name__ == "__main__":
    main()
