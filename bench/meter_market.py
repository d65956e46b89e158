"""The processes of bench/meter.py, and its market phase's community: meters that trade by themselves.

The market phase runs the measured meter as a household on a market: a genesis with a short
interval, one validator accepting and clearing orders, and both meters' policies set to
`mode = "auto"`, so each agent (edge/agent_node.py) places an order every interval from its
own forecast. The measured meter (m0001) imports and bids its shortfall; the peer (m0002)
exports, is registered as solar, and asks its surplus, so bids are filled and the measured
meter also pays for what a fill brings (statuses, ERCs against its one-time keys). An
interval of 10 s is 360 orders an hour, against 4 at a 15-minute interval: a worst case.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

from broker.client import BusClient
from broker.clock import wall_ms
from broker.runtime import wait_or_kill
from deploy.provision import Community, community_genesis, provision
from edge import policy
from edge.config import CONFIG_NAME
from edge.store import MeterStore, OrderRow
from ledger.genesis import write_genesis
from wire import topics

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BUYER, SELLER = "m0001", "m0002"  # the measured meter imports, its peer exports
OPENING_UNITS = 10**9  # every household's opening balance: the agent's bids never run out of money
BUY_MAX_PRICE, SELL_MIN_PRICE = 2, 1  # units per Wh: every ask is below every bid, so each clears
BUYER_POLICY = policy.Policy(mode="auto", buy_max_price=BUY_MAX_PRICE, max_spend_per_day=OPENING_UNITS)
SELLER_POLICY = policy.Policy(mode="auto", sell_min_price=SELL_MIN_PRICE)
PLACED = " agent: "  # edge/agent_node.py logs each order it places: "m0001 agent: bid 4 Wh at 2 ..."


class Bench(Exception):
    """The run could not finish (a process died or did not come up)."""


class Child:
    """A `python -m ...` of this repository as a subprocess, its output in a log file."""

    def __init__(self, name: str, module_args: list[str], log: Path):
        self.name, self.log = name, log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", *module_args],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = "\n".join(self.text().splitlines()[-20:])
            raise Bench(f"{self.name} exited with {self.process.returncode}:\n{tail}")

    def wait_for(self, text: str, timeout: float, what: str) -> None:
        """Until `text` is in the log; Bench if the process ends or `timeout` s pass first."""
        deadline = time.monotonic() + timeout
        while text not in self.text():
            self.check_alive()
            if time.monotonic() > deadline:
                raise Bench(f"{self.name}: no {what} in {timeout:.0f} s:\n{self.text()[-3000:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if not wait_or_kill(self.process, 15):
                print(f"meter: {self.name} ignored SIGTERM for 15 s; killed it", file=sys.stderr)


def market_community(root: Path, interval_s: int) -> Community:
    """Two household meters on a market of `interval_s` s intervals, the seller registered as
    solar, a genesis for one validator beside community.toml, and both policies on auto."""
    community = provision(
        root, meters=2, accounts=None, validators=1, now_ms=wall_ms(), sources={SELLER: "solar"}, interval_s=interval_s
    )
    write_genesis(root, community_genesis(community, OPENING_UNITS, block_ms=200))
    policy.save(root / "meters" / BUYER / CONFIG_NAME, BUYER_POLICY)
    policy.save(root / "meters" / SELLER / CONFIG_NAME, SELLER_POLICY)
    return community


def start_validator(root: Path, port: int, log: Path, timeout: float = 30) -> Child:
    """`spb-ledger run ROOT --validator 0`, once it said `online` (retained) on the bus:
    from then on it takes every order a meter publishes."""
    online = threading.Event()
    watcher = BusClient(HOST, port, "bench-meter-ledger-state", clean_session=True)
    watcher.subscribe(
        topics.LEDGER_STATE_ALL, lambda _topic, payload, _retained: payload.startswith(topics.ONLINE) and online.set()
    )
    watcher.connect()
    validator = Child(
        "validator 0", ["ledger.cli", "run", str(root), "--broker", f"{HOST}:{port}", "--validator", "0"], log
    )
    try:
        deadline = time.monotonic() + timeout
        while not online.wait(0.1):
            validator.check_alive()
            if time.monotonic() > deadline:
                raise Bench(f"validator 0 did not say online in {timeout:.0f} s:\n{validator.text()[-3000:]}")
    except BaseException:
        validator.stop()
        raise
    finally:
        watcher.close()
    return validator


def placed_orders(state_dir: Path, since_ms: int, until_ms: int) -> list[OrderRow]:
    """The orders a meter placed between the two wall times, with the states the ledger gave
    them, from its store (read after the meter stopped: the store is the meter's own)."""
    with closing(MeterStore(state_dir / "meter.db")) as store:
        return [row for row in store.orders_from(0) if since_ms <= row.created <= until_ms]


def describe(rows: list[OrderRow]) -> str:
    """ "bid 6, 25 Wh; filled 5, open 1": sides, Wh and states of some orders."""
    if not rows:
        return "none"
    sides = collections.Counter(str(row.side) for row in rows)
    states = collections.Counter(str(row.state) for row in rows)
    return (
        f"{', '.join(f'{side} {n}' for side, n in sorted(sides.items()))}, {sum(row.wh for row in rows)} Wh; "
        f"{', '.join(f'{state} {n}' for state, n in states.most_common())}"
    )
