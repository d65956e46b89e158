"""A street of six households trading by themselves, as real processes: a provisioned
community (deploy.provision) whose genesis has a market of short intervals, Mosquitto with the
community's TLS and ACL (broker.secure), four `spb-ledger run` validators and six `spb-meter
run` meters with emulated ADCs and their policies in `mode = auto` (edge.policy), so every
order comes from the meters' own agents (edge.agent_node).

A read-only monitor (the community's `monitor` certificate, a persistent session, so the
broker keeps what it missed across a broker restart) records what the validators publish,
each message checked against the genesis' keys before a test reads it. The meters' and the
validators' databases are read while they run (SQLite in WAL mode) to wait on conditions.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from broker.client import BusClient, TlsFiles
from broker.clock import wall_ms
from broker.runtime import Mosquitto, free_port
from broker.secure import start_secure
from deploy.bus import DEFAULT_MONITOR
from deploy.provision import Community, community_genesis, provision
from edge import policy
from edge.config import CONFIG_NAME
from edge.store import OrderRow
from ledger.genesis import write_genesis
from ledger.state import LedgerState
from ledger.store import LedgerStore
from ledger.validator import ValidatorIdentity
from tests.support.bus import Inbox, connected, wait_for
from tests.support.meter import in_store
from tests.support.procs import Procs
from wire import topics
from wire.messages import Cleared, CtpState, Rejection, Status
from wire.verify import Verifier

VALIDATORS = 4
INTERVAL_S = 6  # the agent orders 3 s before each gate (edge/agent_node.py: MIN_LEAD_MS)
I = INTERVAL_S * 1000  # noqa: E741 - the protocol's name for it
OPENING = 10_000  # every household's units in the genesis
BLOCK_MS = 200


@dataclass(frozen=True)
class Household:
    """A meter, what its emulated ADC measures (W: + import, - export), what it sells, and
    its policy's limits (units per Wh)."""

    meter: str
    watts: int
    source: str | None = None
    sell_min_price: int = 0
    buy_max_price: int = 0
    green_only: bool = False

    def policy(self) -> policy.Policy:
        return policy.Policy(
            mode="auto",
            sell_min_price=self.sell_min_price,
            buy_max_price=self.buy_max_price,
            green_only=self.green_only,
            max_spend_per_day=OPENING,
        )


# Three producers with registered sources and three consumers; every ask's floor is below
# every bid's ceiling, so the books cross every interval. 3600 W is 1 Wh a second.
STREET = (
    Household("m0001", -3600, "solar", sell_min_price=2),
    Household("m0002", -3000, "solar", sell_min_price=3),
    Household("m0003", -1800, "wind", sell_min_price=1),
    Household("m0004", 3600, buy_max_price=6),
    Household("m0005", 2400, buy_max_price=5, green_only=True),
    Household("m0006", 1800, buy_max_price=4),
)


class Street:
    def __init__(self, tmp: Path, local_port: int | None = None):
        """local_port: also the broker's anonymous read-only listener on 127.0.0.1 (monitors)."""
        self.community: Community = provision(
            tmp / "street",
            meters=len(STREET),
            accounts=None,
            validators=VALIDATORS,
            now_ms=wall_ms(),
            sources={h.meter: h.source for h in STREET if h.source},
            interval_s=INTERVAL_S,
        )
        self.root = self.community.root
        write_genesis(self.root, community_genesis(self.community, OPENING, block_ms=BLOCK_MS))
        for h in STREET:
            policy.save(self.meter_dir(h.meter) / CONFIG_NAME, h.policy())
        self.procs = Procs(tmp / "logs")
        self.validators: dict[int, subprocess.Popen] = {}
        self.meters: dict[str, subprocess.Popen] = {}
        self.broker: Mosquitto = start_secure(self.root / "broker", free_port(), local_port=local_port)
        assert self.broker.port is not None, "start_secure started it"
        self.inbox = Inbox()
        self.monitor = BusClient(
            "127.0.0.1",
            self.broker.port,
            DEFAULT_MONITOR,
            clean_session=False,
            reconnect_min_delay=0.05,
            reconnect_max_delay=0.5,
            tls=TlsFiles.in_dir(self.root / "monitoring" / DEFAULT_MONITOR),
        )
        watched = (
            topics.REJECTS,
            topics.STATUS_ALL,
            topics.MARKET_ALL,
            topics.LEDGER_STATE_ALL,
            topics.every_meter("state"),
        )
        for topic_filter in watched:
            self.monitor.subscribe(topic_filter, self.inbox)
        connected(self.monitor)
        genesis = ValidatorIdentity.load(self.root, 0, with_key=False).genesis
        self.verifier = Verifier(cas=genesis.cas, validators=genesis.validators)
        self.account = {m.id: bytes.fromhex(m.account_pk) for m in self.community.meters if m.account_pk}

    def close(self) -> None:
        self.procs.kill_all()
        self.monitor.close()
        self.broker.stop()

    # ---- processes -----------------------------------------------------------------------

    def meter_dir(self, meter: str) -> Path:
        return self.root / "meters" / meter

    def start_validator(self, i: int, *options: object) -> None:
        self.validators[i] = self.procs.start(
            f"v{i}", "ledger.cli", "run", self.root, "--broker", self.broker.url, "--validator", i, *options
        )

    def start_meter(self, h: Household) -> None:
        self.meters[h.meter] = self.procs.start(
            h.meter,
            "edge.cli",
            "run",
            "--state-dir",
            self.meter_dir(h.meter),
            "--broker",
            self.broker.url,
            "--adc",
            "fake",
            f"--fake-w={h.watts}",
            "--reading-s",
            "2",
            "--resend-s",
            "2",
        )

    def wait_online(self, since: int, timeout: float = 30) -> None:
        """Until every validator said `online <h>` and every meter `online` after inbox position `since`."""
        want = {topics.ledger_state(i) for i in range(VALIDATORS)} | {topics.meter(h.meter, "state") for h in STREET}

        def said() -> set[str]:
            return {t for t, p, _ in self.inbox.messages[since:] if p.startswith(b"online") and t in want}

        wait_for(lambda: said() == want, timeout, lambda: f"online: missing {want - said()}{self.procs.logs()}")

    def stop_all(self) -> None:
        """SIGTERM to every meter (a clean stop empties its outbox), then every validator,
        once their heads agree; each must exit 0."""
        for proc in self.meters.values():
            self.procs.stop(proc)
        self.wait_heads_agree()
        for proc in self.validators.values():
            self.procs.stop(proc)

    # ---- what the validators published (verified) -------------------------------------------

    def results(self) -> dict[int, Cleared]:
        found = {}
        for t, p, _ in list(self.inbox.messages):
            if t.endswith("/result") and t.startswith(topics.MARKET):
                result = self.verifier.verify(p, wall_ms(), expect=Cleared).body
                assert t == topics.market_result(result.k), t
                found[result.k] = result
        return found

    def rejections(self) -> list[Rejection]:
        return [
            self.verifier.verify(p, wall_ms(), expect=Rejection).body
            for t, p, _ in list(self.inbox.messages)
            if t == topics.REJECTS
        ]

    def statuses(self) -> list[Status]:
        found = []
        for t, p, _ in list(self.inbox.messages):
            if topics.expected_type(t) == "status":
                status = self.verifier.verify(p, wall_ms(), expect=Status).body
                assert t == topics.status(status.ctp), t
                found.append(status)
        return found

    def settled_fills(self, held_after: int = 0) -> set[bytes]:
        """The trades (all of them fills here) held at a block time after `held_after` that settled."""
        statuses = self.statuses()
        held = {s.ctp for s in statuses if s.state == CtpState.HELD and s.t > held_after}
        return held & {s.ctp for s in statuses if s.state == CtpState.SETTLED}

    def wait_result(self, accept, timeout: float, what: str) -> Cleared:
        """The first interval result (by k) that `accept` takes, once published."""
        found = wait_for(
            lambda: next((r for k, r in sorted(self.results().items()) if accept(r)), None),
            timeout,
            lambda: f"{what}; results {sorted(self.results())}{self.procs.logs()}",
            interval=0.1,
        )
        assert found is not None
        return found

    # ---- what the databases hold ------------------------------------------------------------

    def orders(self, meter: str) -> list[OrderRow]:
        return in_store(self.meter_dir(meter), lambda store: store.orders_from(0))

    def store_of(self, meter: str, read):
        return in_store(self.meter_dir(meter), read)

    def ledger(self, i: int) -> LedgerStore:
        identity = ValidatorIdentity.load(self.root, i, with_key=False)
        return LedgerStore(identity.db_path, identity.genesis, readonly=True)

    def state(self, i: int = 0) -> LedgerState:
        store = self.ledger(i)
        try:
            return store.load()
        finally:
            store.close()

    def heads(self) -> list[tuple[int, bytes, bytes]]:
        heads = []
        for i in range(VALIDATORS):
            store = self.ledger(i)
            try:
                heads.append(store.head())
            finally:
                store.close()
        return heads

    def wait_heads_agree(self, timeout: float = 30) -> tuple[int, bytes, bytes]:
        wait_for(lambda: len(set(self.heads())) == 1, timeout, lambda: f"one head; have {self.heads()}", interval=0.1)
        return self.heads()[0]

    def set_policy(self, meter: str, **changes) -> None:
        path = self.meter_dir(meter) / CONFIG_NAME
        policy.save(path, policy.load(path).with_set([f"{k}={v}" for k, v in changes.items()]))
