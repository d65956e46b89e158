"""A validator's health as Prometheus metrics: `spb-ledger run --metrics-port P`.

The one module that imports prometheus_client (the `metrics` extra), and only inside
LedgerMetrics and `available`, so that ledger.service can import this module and a
validator without the extra still runs; `spb-ledger run` refuses --metrics-port without it.

Each service has a registry of its own (never prometheus_client's global one): two
validators in one test process do not mix their numbers. No `validator` label: one process
is one validator, and Prometheus labels each scrape target with its `instance`; the
`spb_ledger_validator_info` gauge says which validator of which genesis it is.

Cheap on the service's main loop: the gauges and counters are read when scraped, from plain
integers the service and its replica keep anyway (Health, read on the HTTP server's thread);
only the histograms are observed where their events happen (a transaction's signature
check, a PUBACK, a decided block), each a clock read and a bucket count.

Counters start at zero with the process, as Prometheus expects: a validator that starts
from an empty ledger and decides or catches up every block has
`spb_ledger_blocks_total` summed over `how` equal to its committed height.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.registry import CollectorRegistry

    from wire.verify import Verifier

PREFIX = "spb_ledger_"
INSTALL = "install spb-energy[metrics]"  # what to do when prometheus_client is missing

# The names, for docs and tests; each `_total` counter is its family name plus `_total`.
HEIGHT = PREFIX + "height"
BLOCK_TIME = PREFIX + "block_time_seconds"
BLOCKS = PREFIX + "blocks"  # counter, label how=proposed|caught_up
ROUND_CHANGES = PREFIX + "round_changes"  # counter
CATCH_UPS = PREFIX + "catch_ups"  # counter
RETAINED_IGNORED = PREFIX + "retained_transactions_ignored"  # counter
THROTTLED = PREFIX + "throttled_transactions"  # counter
PENDING = PREFIX + "pending_transactions"
OUTBOX = PREFIX + "outbox_depth"
VERIFY = PREFIX + "transaction_verify_seconds"  # histogram
PUBACK = PREFIX + "puback_seconds"  # histogram
BLOCK_INTERVAL = PREFIX + "block_interval_seconds"  # histogram
INFO = PREFIX + "validator_info"
CLOCK_JUMPS = PREFIX + "clock_jumps"  # counter
CLOCK_OFFSET = PREFIX + "clock_offset_seconds"
MONEY = PREFIX + "money_units"  # label kind=in_ledger|funded|withdrawn (docs/PROTOCOL.md §10)
ACCOUNTS = PREFIX + "accounts"  # label state=active|retired|replaced

# An Ed25519 check takes tens of µs; a cached one (a block's replay) about a µs.
VERIFY_BUCKETS = (1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1)
PUBACK_BUCKETS = (5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# block_ms is 50 ms in tests and 200 ms by default; an idle ledger makes a block per expiry.
INTERVAL_BUCKETS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Health(NamedTuple):
    """What a validator's gauges and counters say, as the service reads it for one scrape."""

    height: int  # committed height
    block_t_ms: int  # time of the last block, ms since the epoch (0 before the first)
    blocks_proposed: int  # decided in this process's rounds, whoever proposed them
    blocks_caught_up: int  # decided from a peer's catch-up answer
    round_changes: int  # ROUND_CHANGE messages this validator sent (rounds it left)
    catch_ups: int  # catch-up answers that brought it at least one block
    pending: int  # transactions in its pool
    outbox: int  # messages to publish the broker has not acknowledged: waiting or in flight
    retained_ignored: int = 0  # retained copies on transaction topics, not taken as transactions
    clock_jumps: int = 0  # wall clock jumps the clock guard held off (ledger.clock_guard)
    throttled: int = 0  # transactions refused `busy` beyond their sender's rate (ledger.door.Rates)
    clock_offset_ms: int = 0  # the wall clock minus the time the validator uses: 0 unless held off
    funded: int = 0  # units the ledger took in by `fund` since the genesis
    withdrawn: int = 0  # units it paid out by `payout`
    in_ledger: int = 0  # balances + holds: the genesis total + funded - withdrawn (checked at commit)
    accounts: int = 0  # account keys, replaced ones included
    retired: int = 0
    replaced: int = 0  # keys a rotation replaced


def available() -> bool:
    """Whether prometheus_client can be imported (the `metrics` extra is installed)."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


class LedgerMetrics:
    """One validator's metrics, in its own registry, and the HTTP server that shows them."""

    def __init__(self, health: Callable[[], Health], validator: int, genesis: str):
        from prometheus_client import CollectorRegistry, Histogram

        self.registry: CollectorRegistry = CollectorRegistry()
        self.registry.register(_HealthCollector(health, validator, genesis))
        self.verify_seconds = Histogram(
            VERIFY,
            "Seconds per signature check of a transaction (§4: at the door, and again when a block replays it)",
            buckets=VERIFY_BUCKETS,
            registry=self.registry,
        )
        self.puback_seconds = Histogram(
            PUBACK,
            "Seconds from handing a publish to the MQTT client to the broker's PUBACK",
            buckets=PUBACK_BUCKETS,
            registry=self.registry,
        )
        self.block_interval_seconds = Histogram(
            BLOCK_INTERVAL,
            "Seconds between the block times of consecutive blocks this validator committed",
            buckets=INTERVAL_BUCKETS,
            registry=self.registry,
        )
        self._server: WSGIServer | None = None

    # -- hooks, on the service's threads --

    def time_verify(self, verifier: Verifier) -> None:
        """Time every `verify` of this verifier (the one the replica and its drafts use)."""
        verify, observe, clock = verifier.verify, self.verify_seconds.observe, time.perf_counter

        @functools.wraps(verify)
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return verify(*args, **kwargs)
            finally:
                observe(clock() - start)

        verifier.verify = timed  # type: ignore[method-assign]  # an instance attribute, this verifier only

    def timed_ack(self, on_ack: Callable[[int], None] | None) -> Callable[[int], None]:
        """on_ack for a publish handed over now, that also observes its PUBACK latency."""
        start, observe, clock = time.perf_counter(), self.puback_seconds.observe, time.perf_counter

        def acked(mid: int) -> None:
            observe(clock() - start)
            if on_ack is not None:
                on_ack(mid)

        return acked

    def block_interval(self, ms: int) -> None:
        self.block_interval_seconds.observe(ms / 1000)

    # -- serving --

    def exposition(self) -> bytes:
        """The text format a scrape gets."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve /metrics on host:port (0: a free port) on a daemon thread; the port bound."""
        from prometheus_client import start_http_server

        self._server, _ = start_http_server(port, host, registry=self.registry)
        return self._server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _HealthCollector:
    """Gauges and counters made at each scrape from one Health reading."""

    def __init__(self, health: Callable[[], Health], validator: int, genesis: str):
        self.health, self.validator, self.genesis = health, validator, genesis

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        h = self.health()
        info = GaugeMetricFamily(INFO, "Which validator of which genesis this is", labels=["validator", "genesis"])
        info.add_metric([str(self.validator), self.genesis], 1)
        yield info
        yield GaugeMetricFamily(HEIGHT, "Height of the last committed block", value=h.height)
        yield GaugeMetricFamily(
            BLOCK_TIME, "Block time of the last committed block, seconds since the epoch", value=h.block_t_ms / 1000
        )
        blocks = CounterMetricFamily(
            BLOCKS, "Blocks committed since start: decided in rounds, or caught up from peers", labels=["how"]
        )
        blocks.add_metric(["proposed"], h.blocks_proposed)
        blocks.add_metric(["caught_up"], h.blocks_caught_up)
        yield blocks
        yield CounterMetricFamily(
            ROUND_CHANGES, "Rounds this validator left (ROUND_CHANGE sent)", value=h.round_changes
        )
        yield CounterMetricFamily(CATCH_UPS, "Catch-up answers from peers that brought blocks", value=h.catch_ups)
        yield CounterMetricFamily(
            RETAINED_IGNORED,
            "Retained copies on transaction topics, ignored (junk a client left)",
            value=h.retained_ignored,
        )
        yield CounterMetricFamily(
            THROTTLED, "Transactions refused busy beyond their sender's rate (per identity)", value=h.throttled
        )
        yield GaugeMetricFamily(PENDING, "Transactions in the pool, not yet in a block", value=h.pending)
        yield GaugeMetricFamily(
            OUTBOX, "Messages to publish not yet acknowledged by the broker (waiting or in flight)", value=h.outbox
        )
        yield CounterMetricFamily(
            CLOCK_JUMPS,
            "Wall clock jumps held off: block times followed the monotonic clock instead",
            value=h.clock_jumps,
        )
        money = GaugeMetricFamily(
            MONEY,
            "Units in the ledger (balances + holds), and taken in and paid out since the genesis",
            labels=["kind"],
        )
        for kind, units in (("in_ledger", h.in_ledger), ("funded", h.funded), ("withdrawn", h.withdrawn)):
            money.add_metric([kind], units)
        yield money
        accounts = GaugeMetricFamily(
            ACCOUNTS, "Account keys: trading, retired, replaced by a rotation", labels=["state"]
        )
        accounts.add_metric(["active"], h.accounts - h.retired - h.replaced)
        accounts.add_metric(["retired"], h.retired)
        accounts.add_metric(["replaced"], h.replaced)
        yield accounts
        yield GaugeMetricFamily(
            CLOCK_OFFSET,
            "The wall clock minus the time this validator uses, seconds: not 0 while a jump is held off",
            value=h.clock_offset_ms / 1000,
        )
