"""ledger.metrics: the exposition a scrape gets after the service's hooks saw events, the
HTTP server on a free port, and `spb-ledger run --metrics-port` refused without the extra."""

from __future__ import annotations

import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.clock import wall_ms
from ledger import consensus as c
from ledger import metrics as m
from ledger.cli import main
from ledger.metrics import Health, LedgerMetrics
from ledger.replica import Decided
from ledger.service import LedgerService
from ledger.validator import ValidatorIdentity
from ledger.workload import SimCommunity
from tests.ledger.test_replica_caught_up import NOW, TIMING, Net  # four replicas on a simulated network
from tests.support.ledger import ledger_dir

HEALTH = Health(
    height=7,
    block_t_ms=1_800_000_000_250,
    blocks_proposed=5,
    blocks_caught_up=2,
    round_changes=3,
    catch_ups=1,
    pending=4,
    outbox=6,
    retained_ignored=8,
    throttled=9,
    clock_jumps=2,
    clock_offset_ms=-3_600_000,
    funded=100,
    withdrawn=50,
    in_ledger=3050,
    accounts=7,
    retired=1,
    replaced=2,
)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of an exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class FakeVerifier:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def verify(self, raw: bytes, now: int, expect=None) -> str:
        self.calls.append((raw, now, expect))
        if raw == b"bad":
            raise ValueError("bad")
        return "opened"


def test_the_exposition_holds_every_metric_after_events():
    metrics = LedgerMetrics(lambda: HEALTH, 2, "ab" * 32)
    verifier = FakeVerifier()
    metrics.time_verify(verifier)  # type: ignore[arg-type]
    assert verifier.verify(b"ok", 5, expect="ctp") == "opened"
    with pytest.raises(ValueError):
        verifier.verify(b"bad", 6)  # a check that fails is timed too
    assert verifier.calls == [(b"ok", 5, "ctp"), (b"bad", 6, None)]
    acked: list[int] = []
    metrics.timed_ack(acked.append)(17)
    metrics.timed_ack(None)(18)
    for ms in (50, 250, 250):
        metrics.block_interval(ms)

    got = samples(metrics.exposition().decode())

    assert got[("spb_ledger_validator_info", (("genesis", "ab" * 32), ("validator", "2")))] == 1
    assert got[("spb_ledger_height", ())] == 7
    assert got[("spb_ledger_block_time_seconds", ())] == 1_800_000_000.25
    assert got[("spb_ledger_blocks_total", (("how", "proposed"),))] == 5
    assert got[("spb_ledger_blocks_total", (("how", "caught_up"),))] == 2
    assert got[("spb_ledger_round_changes_total", ())] == 3
    assert got[("spb_ledger_catch_ups_total", ())] == 1
    assert got[("spb_ledger_pending_transactions", ())] == 4
    assert got[("spb_ledger_outbox_depth", ())] == 6
    assert got[("spb_ledger_retained_transactions_ignored_total", ())] == 8
    assert got[("spb_ledger_throttled_transactions_total", ())] == 9
    assert got[("spb_ledger_clock_jumps_total", ())] == 2
    assert got[("spb_ledger_clock_offset_seconds", ())] == -3600
    assert got[("spb_ledger_money_units", (("kind", "in_ledger"),))] == 3050
    assert got[("spb_ledger_money_units", (("kind", "funded"),))] == 100
    assert got[("spb_ledger_money_units", (("kind", "withdrawn"),))] == 50
    assert got[("spb_ledger_accounts", (("state", "active"),))] == 4
    assert got[("spb_ledger_accounts", (("state", "retired"),))] == 1
    assert got[("spb_ledger_accounts", (("state", "replaced"),))] == 2
    assert got[("spb_ledger_transaction_verify_seconds_count", ())] == 2
    assert acked == [17]
    assert got[("spb_ledger_puback_seconds_count", ())] == 2
    assert got[("spb_ledger_block_interval_seconds_count", ())] == 3
    assert got[("spb_ledger_block_interval_seconds_sum", ())] == pytest.approx(0.55)
    assert got[("spb_ledger_block_interval_seconds_bucket", (("le", "0.05"),))] == 1
    assert got[("spb_ledger_block_interval_seconds_bucket", (("le", "0.2"),))] == 1
    assert got[("spb_ledger_block_interval_seconds_bucket", (("le", "0.5"),))] == 3


def test_two_services_keep_their_numbers_apart():
    """A registry per service: the global one stays untouched, and two in one process do not clash."""
    from prometheus_client import REGISTRY

    one, two = LedgerMetrics(lambda: HEALTH, 0, "00"), LedgerMetrics(lambda: HEALTH._replace(height=9), 1, "00")
    one.block_interval(1000)
    assert samples(two.exposition().decode())[("spb_ledger_height", ())] == 9
    assert samples(two.exposition().decode())[("spb_ledger_block_interval_seconds_count", ())] == 0
    assert REGISTRY.get_sample_value("spb_ledger_height") is None


def test_a_service_serves_its_health_on_a_free_port(tmp_path):
    """serve_metrics(0) binds a free port and says which; a scrape reads the service's own
    numbers (a fresh validator: height 0, nothing pending, nothing to publish)."""
    root = ledger_dir(tmp_path / "ledger", SimCommunity(2, wall_ms()))
    service = LedgerService(ValidatorIdentity.load(root, 0), "127.0.0.1", 1)  # never connects: run() is not called
    try:
        port = service.serve_metrics(0)
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            got = samples(response.read().decode())
    finally:
        service.metrics and service.metrics.close()
        service.node.close()
        service.bus.close()
    assert got[("spb_ledger_height", ())] == 0
    assert got[("spb_ledger_pending_transactions", ())] == 0
    assert got[("spb_ledger_outbox_depth", ())] == 0
    assert got[("spb_ledger_blocks_total", (("how", "proposed"),))] == 0
    assert got[("spb_ledger_clock_jumps_total", ())] == 0  # the real clock, guarded: in step
    assert got[("spb_ledger_clock_offset_seconds", ())] == 0
    assert service.guard is not None
    genesis = service.identity.genesis.hash.hex()
    assert got[("spb_ledger_validator_info", (("genesis", genesis), ("validator", "0")))] == 1


def test_metrics_without_prometheus_client_exit_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if the extra were not installed
    assert not m.available()
    assert main(["run", "/nonexistent", "--broker", "127.0.0.1:1883", "--metrics-port", "0"]) == 2
    assert "install spb-energy[metrics]" in capsys.readouterr().err


@pytest.mark.parametrize("port", ["-1", "65536", "http", ""])
def test_a_metrics_port_out_of_range_is_refused(port, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "/nonexistent", "--broker", "127.0.0.1:1883", "--metrics-port", port])
    assert exit_.value.code == 2
    assert "is not a port number from 0 to 65535" in capsys.readouterr().err


# ---- the replica's plain counters the service copies into its metrics ---------------------


def test_a_replica_counts_the_rounds_it_left():
    """Each timeout without a quorum is one round left, one ROUND_CHANGE sent."""
    net = Net(running=(0,))
    replica = net.replicas[0]
    typ, raw = net.w.txs[0]
    sent = net.act(0, replica.submit(typ, raw, NOW, 0))
    for _ in range(2):
        deadline = replica.deadline(NOW, 0)
        assert deadline is not None
        sent += net.act(0, replica.tick(NOW + deadline, deadline))
    kinds = [c.open_signed(s.payload, net.w.genesis.validators).kind for s in sent]
    assert replica.round_changes == kinds.count(c.ROUND_CHANGE) == 2
    assert replica.catch_ups == 0


def test_a_replica_counts_the_catch_ups_that_brought_blocks():
    """A fresh validator 0 catches up three blocks from its peers' answers, at most two blocks
    per answer and one answer per peer per sync_ms: two answers brought blocks; the empty ones
    that tell it it reached the head are not counted."""
    net = Net()
    net.decide_blocks(3)
    net.replicas[0] = fresh = net._replica(0)
    net.chains[0].clear()
    decided: list[Decided] = []
    for step in range(4):
        mono = 10_000 + step * TIMING.sync_ms  # each peer answers again after sync_ms
        actions = fresh.rejoin(NOW + mono, mono) if step == 0 else fresh.tick(NOW + mono, mono)
        net.act(0, actions)
        while net.queue:
            sender, send = net.queue.popleft()
            for to in sorted(net.running - {sender}):
                if send.to is None or send.to == to:
                    actions = net.replicas[to].receive(send.payload, NOW + mono, mono)
                    net.act(to, actions)
                    decided += [a for a in actions if isinstance(a, Decided) and to == 0]
    assert fresh.state.height == 3 and fresh.caught_up
    assert [d.proposer for d in decided] == [None, None, None]
    assert fresh.catch_ups == 2
    assert all(r.round_changes == 0 for r in net.replicas)
